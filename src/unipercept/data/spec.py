"""A dataset as the configs name it: how to read it and which prompt kind it trains."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from unipercept.data.datasets.base import DatasetReader
from unipercept.data.types import Sample

PromptKind = Literal["category", "expression", "annotation"]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a training mixture or an evaluation.

    Building a spec touches no file: ``reader`` is a factory (a partial in the config), called
    when the data is needed, so configs compose and instantiate on machines without the data.

    Attributes:
        name: the dataset's name in logs, mixtures and checkpoints.
        reader: returns the reader (e.g. ``functools.partial(CocoReader, annotations=...)``).
        prompt_kind: the kind of prompt its samples train ("category", "expression" or
            "annotation").
    """

    name: str
    reader: Callable[[], DatasetReader]
    prompt_kind: PromptKind

    def __post_init__(self) -> None:
        if self.prompt_kind not in ("category", "expression", "annotation"):
            raise ValueError(
                f"dataset {self.name!r}: prompt_kind must be category, expression "
                f"or annotation, got {self.prompt_kind!r}"
            )

    def read(self) -> list[Sample]:
        """Reads every sample (raises DatasetError on bad data, as the reader is set up)."""
        return self.reader().samples()
