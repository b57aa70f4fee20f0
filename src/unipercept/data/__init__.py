"""Data: readers for the datasets' own formats, typed samples, transforms, sampling, and a
generated world written in those formats."""

from unipercept.data.spec import DatasetSpec
from unipercept.data.types import Expression, Frame, Sample

__all__ = ["DatasetSpec", "Expression", "Frame", "Sample"]
