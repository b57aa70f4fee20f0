"""What every dataset reader shares: a name, typed samples, and one policy for bad records."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from unipercept.data.types import Sample

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]


class DatasetError(ValueError):
    """A record of a dataset file that cannot be read as promised.

    The message names the file and the record (image id, annotation id, video, frame), so the
    user can find and fix it.
    """

    def __init__(self, path: str | Path, record: str, problem: str) -> None:
        self.path = Path(path)
        self.record = record
        self.problem = problem
        super().__init__(f"{path}: {record}: {problem}")


class DatasetReader:
    """Base of the readers: iterate over :class:`Sample` s of one dataset.

    Bad data (malformed records, missing images, annotations outside their image, zero-area
    boxes) either raises :class:`DatasetError` naming the file and record (``on_error="raise"``,
    the default), or, with ``on_error="skip"``, the record (annotation, frame or sample, the
    smallest unit that removes the problem) is left out, counted by kind in :attr:`skipped`, and
    the counts are logged once when reading finishes.

    Subclasses implement :meth:`_read` and call :meth:`problem` for every bad record.
    """

    name: str = "dataset"

    def __init__(self, *, on_error: OnError = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: Counter[str] = Counter()

    def problem(self, path: str | Path, record: str, problem: str, kind: str) -> None:
        """Reports a bad record: raises, or counts it under ``kind`` when skipping."""
        if self.on_error == "raise":
            raise DatasetError(path, record, problem)
        self.skipped[kind] += 1

    def _read(self) -> Iterator[Sample]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        self.skipped.clear()
        yield from self._read()
        if self.skipped:
            counts = ", ".join(f"{count} {kind}" for kind, count in sorted(self.skipped.items()))
            logger.warning("%s: skipped %s", self.name, counts)

    def samples(self) -> list[Sample]:
        """All samples, read once."""
        return list(self)
