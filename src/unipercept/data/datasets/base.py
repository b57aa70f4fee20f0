"""What every dataset reader shares: a name, typed samples, and one policy for bad records.

Bad records: a record that cannot be read as promised (malformed, missing its image, a box
with no area) either raises :class:`DatasetError` naming the file and record
(``on_error="raise"``, the default) or, with ``on_error="skip"``, is left out and counted by
kind in :attr:`DatasetReader.skipped`, the counts logged once (a warning) when reading ends.

Boxes past the image: every reader clips a box to its image (``0 <= x <= width``,
``0 <= y <= height``) and counts it under ``"clipped box"`` in
:attr:`DatasetReader.changed`; a box that is empty once clipped (it lies wholly outside the
image) is a bad record, handled as above. Boxes computed from masks are inside by
construction.

Records read differently from the file without being bad (clipped boxes, rows a reader's
options leave out) are counted by kind in :attr:`DatasetReader.changed`, logged once (info)
when reading ends.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from unipercept.data.types import Sample

logger = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]

CLIPPED = "clipped box"


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

    Bad data (malformed records, missing images, boxes wholly outside their image, zero-area
    boxes) either raises :class:`DatasetError` naming the file and record (``on_error="raise"``,
    the default), or, with ``on_error="skip"``, the record (annotation, frame or sample, the
    smallest unit that removes the problem) is left out, counted by kind in :attr:`skipped`, and
    the counts are logged once when reading finishes. Boxes overhanging their image are clipped
    (:meth:`clip_box`) and counted in :attr:`changed`.

    Subclasses implement :meth:`_read` and call :meth:`problem` for every bad record.

    Attributes:
        skipped: bad records left out (``on_error="skip"``), by kind.
        changed: records read differently from the file without being bad, by kind:
            ``"clipped box"``, and kinds of a reader's own (the MOT reader counts the rows of
            each class it does not keep).
    """

    name: str = "dataset"

    def __init__(self, *, on_error: OnError = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: Counter[str] = Counter()
        self.changed: Counter[str] = Counter()

    def problem(self, path: str | Path, record: str, problem: str, kind: str) -> None:
        """Reports a bad record: raises, or counts it under ``kind`` when skipping."""
        if self.on_error == "raise":
            raise DatasetError(path, record, problem)
        self.skipped[kind] += 1

    def share_counters(self, other: DatasetReader) -> None:
        """Makes ``other`` (a reader this one reads through) count into this reader's
        counters, so one summary is logged."""
        other.skipped = self.skipped
        other.changed = self.changed

    def clip_box(
        self, box: Sequence[float], image_size: tuple[int, int]
    ) -> tuple[list[float], str | None]:
        """The policy for an xyxy box in pixels: clipped to the image, or why it is bad.

        A box that clipping changes is counted under ``"clipped box"`` in :attr:`changed`, so
        call this last, once the rest of the record is known to be good.

        Args:
            box: ``(x1, y1, x2, y2)`` in pixels.
            image_size: the image's (height, width).

        Returns:
            The clipped box and None; or the box as given and why it is bad (not finite, no
            width or height, or empty once clipped: wholly outside the image). The caller
            reports a bad box through :meth:`problem`.
        """
        height, width = image_size
        x1, y1, x2, y2 = (float(v) for v in box)
        given = [x1, y1, x2, y2]
        if not all(math.isfinite(v) for v in given):
            return given, f"box {given} is not finite"
        if x2 <= x1 or y2 <= y1:
            return given, f"box {given} has zero or negative width or height"
        clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            return (
                given,
                f"box {given} lies outside the {width}x{height} image (empty once clipped)",
            )
        if clipped != given:
            self.changed[CLIPPED] += 1
        return clipped, None

    def _read(self) -> Iterator[Sample]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        self.skipped.clear()
        self.changed.clear()
        yield from self._read()
        if self.skipped:
            counts = ", ".join(f"{count} {kind}" for kind, count in sorted(self.skipped.items()))
            logger.warning("%s: skipped %s", self.name, counts)
        if self.changed:
            counts = ", ".join(f"{count} {kind}" for kind, count in sorted(self.changed.items()))
            logger.info("%s: read with %s", self.name, counts)

    def samples(self) -> list[Sample]:
        """All samples, read once."""
        return list(self)
