"""Single-object tracking: LaSOT, GOT-10k and TrackingNet, one box track per sequence.

On disk::

    LaSOT        root/<category>/<category>-<n>/img/00000001.jpg ...
                 root/<category>/<category>-<n>/groundtruth.txt     one box a line
                 root/<category>/<category>-<n>/full_occlusion.txt  one line of 0/1 flags
                 root/<category>/<category>-<n>/out_of_view.txt     one line of 0/1 flags
                 root/<category>/<category>-<n>/nlp.txt             the target's description
                 root/training_set.txt, root/testing_set.txt        sequence names
    GOT-10k      root/<split>/list.txt                              sequence names
                 root/<split>/<seq>/00000001.jpg ..., groundtruth.txt, absence.label (0/1 a line)
    TrackingNet  root/<chunk>/frames/<seq>/0.jpg, 1.jpg, ...        from 0, not zero-padded
                 root/<chunk>/anno/<seq>.txt                        one box a line

A box line is ``x, y, w, h`` in pixels, separated by commas, tabs or spaces. The target is track 1
with label 0; ``categories`` is ``()``. A frame has no instance but stays annotated when the target
is absent: a line of NaN, a zero-size box (the datasets' way to say "absent"), or a frame flagged
fully occluded, out of view or absent. Boxes partly outside the image are clipped (and counted, see
:mod:`unipercept.data.datasets.base`). The test splits (GOT-10k ``test``, TrackingNet ``TEST``) give
only the first frame's box: the other frames have ``annotated=False``. LaSOT's sentence becomes an
:class:`Expression` naming track 1 (left out when no frame shows the target). The image size comes
from the first frame's header and is assumed constant in a sequence. Frames are the folder's images
(jpg, png, ...; see :func:`unipercept.data.video.image_files`) in natural order, so TrackingNet's
unpadded ``10.jpg`` comes after ``9.jpg``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from unipercept.data.datasets.base import DatasetError, DatasetReader, OnError
from unipercept.data.io import image_size
from unipercept.data.types import Expression, Frame, Sample, empty_instances
from unipercept.data.video import image_files
from unipercept.structures import Instances

_SEPARATORS = re.compile(r"[,\s]+")


def _read_lines(path: Path, record: str) -> list[str]:
    """The file's lines without trailing blank ones."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DatasetError(path, record, "file not found") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _read_flags(path: Path, record: str, count: int) -> list[bool]:
    """``count`` 0/1 flags (on one line or one a line); all False when the file is absent."""
    if not path.is_file():
        return [False] * count
    tokens = [t for t in _SEPARATORS.split(path.read_text(encoding="utf-8")) if t]
    if len(tokens) != count or not set(tokens) <= {"0", "1"}:
        raise DatasetError(path, record, f"expected {count} flags 0 or 1, got {len(tokens)} values")
    return [token == "1" for token in tokens]


class _SotReader(DatasetReader):
    """What the single-object tracking readers share: boxes, flags and frames of a sequence.

    Bad data are reported through :meth:`problem`: a sequence without frames, without its
    groundtruth, with flag files or box counts that do not match its frames (kind
    ``"sequence"``, left out); a malformed box line, or a box wholly outside the image (kind
    ``"box"``: the frame stays, without instance and with ``annotated=False``).
    """

    def _sequence(
        self,
        sample_id: str,
        images_dir: Path,
        groundtruth: Path,
        *,
        flags: Sequence[Path] = (),
        first_only: bool = False,
        sentence: str | None = None,
    ) -> Sample | None:
        """One sequence, or None when it is skipped as bad data.

        Args:
            sample_id: the sequence name.
            images_dir: the folder of its frame images.
            groundtruth: its box file.
            flags: files of per-frame 0/1 flags; a frame flagged in any has no instance.
            first_only: the box file may hold only the first frame's box (test splits).
            sentence: a description of the target.

        Returns:
            The sample, or None (``on_error="skip"`` only).
        """
        record = f"sequence {sample_id}"
        images = image_files(images_dir)
        try:
            if not images:
                raise DatasetError(images_dir, record, "no frame images (folder missing or empty)")
            size = image_size(images[0])
            lines = _read_lines(groundtruth, record)
            if len(lines) != len(images) and not (first_only and len(lines) == 1):
                raise DatasetError(
                    groundtruth, record, f"{len(lines)} boxes for {len(images)} frames"
                )
            hidden = [False] * len(images)
            for path in flags:
                flagged = _read_flags(path, record, len(images))
                hidden = [a or b for a, b in zip(hidden, flagged, strict=True)]
        except DatasetError as error:
            self.problem(error.path, record, error.problem, "sequence")
            return None
        frames = []
        for index, image in enumerate(images):
            box, annotated = None, index < len(lines)
            if annotated:
                box, annotated = self._box(lines[index], size, groundtruth, record, index)
            if box is None or hidden[index]:
                instances = empty_instances(size)
            else:
                instances = Instances(
                    size,
                    boxes=box[None],
                    labels=torch.zeros(1, dtype=torch.int64),
                    track_ids=torch.ones(1, dtype=torch.int64),
                )
            frames.append(Frame(image, instances, annotated=annotated))
        shown = any(len(frame.instances) for frame in frames)
        expressions = (Expression(sentence, (1,)),) if sentence and shown else ()
        return Sample(self.name, sample_id, tuple(frames), expressions=expressions)

    def _box(
        self, line: str, size: tuple[int, int], path: Path, record: str, index: int
    ) -> tuple[Tensor | None, bool]:
        """The line's clipped xyxy box (None when the target is absent) and whether the frame
        counts as annotated (False when the line is bad and was reported)."""
        record = f"{record} line {index + 1}"
        try:
            values = [float(t) for t in _SEPARATORS.split(line.strip()) if t]
        except ValueError:
            values = []
        if len(values) != 4 or any(math.isinf(v) for v in values):
            self.problem(path, record, f"malformed box {line!r}, expected x, y, w, h", "box")
            return None, False
        x, y, w, h = values
        if any(math.isnan(v) for v in values):
            return None, True
        if w < 0 or h < 0:
            self.problem(path, record, f"box {line!r} has a negative size", "box")
            return None, False
        if w == 0 or h == 0:
            return None, True
        box, why = self.clip_box((x, y, x + w, y + h), size)
        if why is not None:  # finite with a positive size, so: wholly outside the image
            problem = f"box {line!r} lies outside the image of size {size} (height, width)"
            self.problem(path, record, problem, "box")
            return None, False
        return torch.tensor(box), True


class LasotReader(_SotReader):
    """Reads LaSOT (or LaSOT-ext) as one :class:`Sample` per sequence.

    Args:
        root: the folder of category folders (and split files).
        split: ``"train"`` or ``"test"`` reads the sequences of ``training_set.txt`` or
            ``testing_set.txt``; None reads every sequence found, sorted.
        name: the dataset name given to samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
    """

    def __init__(
        self,
        *,
        root: Path,
        split: Literal["train", "test"] | None = None,
        name: str = "lasot",
        on_error: OnError = "raise",
    ) -> None:
        super().__init__(on_error=on_error)
        if split not in ("train", "test", None):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.name = name

    def sequences(self) -> list[str]:
        """The sequence names to read.

        Raises:
            DatasetError: the split file is missing.
        """
        if self.split is None:
            return sorted(img.parent.name for img in self.root.glob("*/*/img"))
        path = self.root / f"{'training' if self.split == 'train' else 'testing'}_set.txt"
        return [line.strip() for line in _read_lines(path, f"split {self.split}") if line.strip()]

    def _read(self) -> Iterator[Sample]:
        for sequence in self.sequences():
            folder = self.root / sequence.rsplit("-", 1)[0] / sequence
            nlp = folder / "nlp.txt"
            sample = self._sequence(
                sequence,
                folder / "img",
                folder / "groundtruth.txt",
                flags=(folder / "full_occlusion.txt", folder / "out_of_view.txt"),
                sentence=nlp.read_text(encoding="utf-8").strip() if nlp.is_file() else None,
            )
            if sample is not None:
                yield sample


class Got10kReader(_SotReader):
    """Reads one GOT-10k split as one :class:`Sample` per sequence of its ``list.txt``.

    Args:
        root: the folder holding the split folders.
        split: ``"train"``, ``"val"`` or ``"test"`` (only the first box is given).
        name: the dataset name given to samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
    """

    def __init__(
        self, *, root: Path, split: str = "train", name: str = "got10k", on_error: OnError = "raise"
    ) -> None:
        super().__init__(on_error=on_error)
        self.root = Path(root)
        self.split = split
        self.name = name

    def sequences(self) -> list[str]:
        """The names in ``<split>/list.txt``.

        Raises:
            DatasetError: the list is missing.
        """
        path = self.root / self.split / "list.txt"
        return [line.strip() for line in _read_lines(path, f"split {self.split}") if line.strip()]

    def _read(self) -> Iterator[Sample]:
        for sequence in self.sequences():
            folder = self.root / self.split / sequence
            sample = self._sequence(
                sequence,
                folder,
                folder / "groundtruth.txt",
                flags=(folder / "absence.label",),
                first_only=self.split == "test",
            )
            if sample is not None:
                yield sample


class TrackingNetReader(_SotReader):
    """Reads TrackingNet chunks as one :class:`Sample` per sequence (chunk by chunk, sorted).

    Args:
        root: the folder holding the chunk folders.
        chunks: the chunk folders to read, e.g. ``("TRAIN_0", "TRAIN_1")`` or ``("TEST",)``
            (only the first box is given).
        name: the dataset name given to samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
    """

    def __init__(
        self,
        *,
        root: Path,
        chunks: Sequence[str] = ("TRAIN_0",),
        name: str = "trackingnet",
        on_error: OnError = "raise",
    ) -> None:
        super().__init__(on_error=on_error)
        self.root = Path(root)
        self.chunks = tuple(chunks)
        self.name = name

    def _read(self) -> Iterator[Sample]:
        for chunk in self.chunks:
            frames_dir = self.root / chunk / "frames"
            if not frames_dir.is_dir():
                raise DatasetError(frames_dir, f"chunk {chunk}", "frames folder not found")
            for folder in sorted(p for p in frames_dir.iterdir() if p.is_dir()):
                sample = self._sequence(
                    folder.name,
                    folder,
                    self.root / chunk / "anno" / f"{folder.name}.txt",
                    first_only=chunk == "TEST",
                )
                if sample is not None:
                    yield sample
