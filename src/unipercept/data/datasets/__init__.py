"""Readers of the datasets' on-disk formats; each yields :class:`unipercept.data.types.Sample`."""

from unipercept.data.datasets.base import DatasetError, DatasetReader

__all__ = ["DatasetError", "DatasetReader"]
