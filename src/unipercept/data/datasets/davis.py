"""DAVIS 2016 and 2017: semi-supervised video object segmentation.

On disk (the layout of the DAVIS 2017 releases, which also carry the 2016 sets)::

    root/
      JPEGImages/<resolution>/<sequence>/00000.jpg ...   (or .png, ...)
      Annotations/<resolution>/<sequence>/00000.png ...
      ImageSets/<year>/<split>.txt          one sequence name per line

DAVIS 2017 annotations are palette PNGs whose indices are object ids (0 is background). Some
files paint void pixels with index 255: they become one extra instance with track id -1 and
``Frame.ignore`` True, so losses and metrics can leave them out. DAVIS 2016 annotations are
binary (0 and 255, mode "L" or "P"): every non-zero pixel belongs to the one object, id 1 (a
2017 multi-object PNG read as 2016 gives the union of its objects, the 2016 foreground).

Every image of a sequence's ``JPEGImages`` folder is a frame (jpg as released, or any suffix of
:data:`unipercept.data.video.IMAGE_SUFFIXES`, as :func:`unipercept.data.video.image_files` lists
them), in natural order (``2.jpg`` before ``10.jpg``; DAVIS's zero-padded names sort the same either
way); a frame without a PNG (test-dev annotates only the first frame) has no instances and
``annotated=False``. An object missing from a frame is simply not among that frame's instances. The
data are class-agnostic: ``categories`` is ``()`` and every label is 0. Every frame carries
``masks`` (empty :class:`RLEMasks` when it has no objects); 2017 frames always carry ``ignore``,
2016 ones never. The image size comes from the first frame's header and is assumed constant in a
sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from unipercept.data.datasets.base import DatasetError, DatasetReader, OnError
from unipercept.data.io import image_size, load_index_png
from unipercept.data.types import Frame, Sample
from unipercept.data.video import image_files
from unipercept.structures import Instances, RLEMasks, rle_encode

VOID = 255
VOID_TRACK_ID = -1


def mask_instances(
    masks: np.ndarray, track_ids: Sequence[int], labels: Sequence[int] | None = None
) -> Instances:
    """Instances of dense object masks, stored as RLE with their tight boxes.

    Args:
        masks: (N, H, W) bool masks.
        track_ids: N object ids.
        labels: N label indices; all 0 (class-agnostic) when None.

    Returns:
        Instances with ``boxes``, ``labels``, ``masks`` (:class:`RLEMasks`) and ``track_ids``.
    """
    size = (int(masks.shape[1]), int(masks.shape[2]))
    rles = RLEMasks(rle_encode(masks), size)
    return Instances(
        size,
        boxes=rles.to_boxes(),
        labels=torch.as_tensor(
            list(labels) if labels is not None else [0] * len(track_ids), dtype=torch.int64
        ),
        masks=rles,
        track_ids=torch.as_tensor(list(track_ids), dtype=torch.int64),
    )


def no_instances(size: tuple[int, int]) -> Instances:
    """Instances of a frame with no objects, with an empty ``masks`` field like its neighbours."""
    return mask_instances(np.zeros((0, *size), dtype=bool), [])


def frame_annotations(
    reader: DatasetReader, images: Sequence[Path], annotations_dir: Path, record: str
) -> dict[str, Path]:
    """The PNGs of a video by frame name; a PNG without a frame image of its name is reported
    (kind ``"annotation"``) and left out.

    Args:
        reader: the reader that reports problems.
        images: the video's frame images.
        annotations_dir: the video's annotation folder.
        record: the video's record name for messages, e.g. ``"sequence bear"``.

    Returns:
        PNG paths by file stem, for stems that have a frame image.
    """
    pngs = {png.stem: png for png in annotations_dir.glob("*.png")}
    stems = {image.stem for image in images}
    for stem in sorted(set(pngs) - stems):
        reader.problem(
            pngs[stem], f"{record} frame {stem}", f"has no image named {stem}", "annotation"
        )
        del pngs[stem]
    return pngs


def load_annotation(
    reader: DatasetReader, png: Path, size: tuple[int, int], record: str
) -> np.ndarray | None:
    """The object indices of an annotation PNG, checked against its frame's size.

    Args:
        reader: the reader that reports problems (kind ``"annotation"``).
        png: the palette or grey PNG.
        size: the frame's (height, width).
        record: the frame's record name for messages.

    Returns:
        (H, W) uint8 indices, or None when the PNG is bad (and was reported).
    """
    try:
        index = load_index_png(png)
    except DatasetError as error:
        reader.problem(png, record, error.problem, "annotation")
        return None
    if index.shape != size:
        reader.problem(
            png,
            record,
            f"mask size {index.shape} (height, width) differs from the frame's {size}",
            "annotation",
        )
        return None
    return index


class DavisReader(DatasetReader):
    """Reads one split of DAVIS 2016 or 2017 as one :class:`Sample` per sequence.

    Bad data are reported through :meth:`problem`: a sequence without frames or without its
    annotation folder (kind ``"sequence"``, the sequence is left out); an annotation that cannot
    be decoded, has no image, or whose size differs from the frame's (kind ``"annotation"``:
    the frame stays, unannotated, so time indices keep their meaning).

    Args:
        root: the DAVIS folder (holding ``JPEGImages``, ``Annotations``, ``ImageSets``).
        year: ``"2016"`` (one object) or ``"2017"`` (many objects).
        split: the name of the ``ImageSets/<year>/<split>.txt`` file.
        resolution: the resolution folder, ``"480p"`` or ``"Full-Resolution"``.
        name: the dataset name given to samples; ``f"davis{year}"`` when None.
        on_error: ``"raise"`` or ``"skip"`` bad records.
    """

    def __init__(
        self,
        *,
        root: Path,
        year: Literal["2016", "2017"] = "2017",
        split: str = "train",
        resolution: str = "480p",
        name: str | None = None,
        on_error: OnError = "raise",
    ) -> None:
        super().__init__(on_error=on_error)
        if year not in ("2016", "2017"):
            raise ValueError(f"year must be '2016' or '2017', got {year!r}")
        self.root = Path(root)
        self.year = year
        self.split = split
        self.resolution = resolution
        self.name = name if name is not None else f"davis{year}"

    def sequences(self) -> list[str]:
        """The split's sequence names, in the order of its ImageSets file.

        Raises:
            DatasetError: the split file is missing (whatever ``on_error`` says: without it
                there is nothing to read).
        """
        path = self.root / "ImageSets" / self.year / f"{self.split}.txt"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DatasetError(path, f"split {self.split}", "split file not found") from None
        return [line.strip() for line in text.splitlines() if line.strip()]

    def _read(self) -> Iterator[Sample]:
        for sequence in self.sequences():
            sample = self.read_sequence(sequence)
            if sample is not None:
                yield sample

    def read_sequence(self, sequence: str) -> Sample | None:
        """One sequence as a :class:`Sample`, or None when it is skipped as bad data.

        Args:
            sequence: the sequence's folder name, e.g. ``"blackswan"``.

        Returns:
            The sample, or None (``on_error="skip"`` only).
        """
        record = f"sequence {sequence}"
        images_dir = self.root / "JPEGImages" / self.resolution / sequence
        annotations_dir = self.root / "Annotations" / self.resolution / sequence
        images = image_files(images_dir)
        if not images:
            problem = "no frame images (folder missing or empty)"
            self.problem(images_dir, record, problem, "sequence")
            return None
        if not annotations_dir.is_dir():
            self.problem(annotations_dir, record, "annotation folder not found", "sequence")
            return None
        try:
            size = image_size(images[0])
        except DatasetError as error:
            self.problem(error.path, record, error.problem, "sequence")
            return None
        pngs = frame_annotations(self, images, annotations_dir, record)
        frames = tuple(
            self._frame(image, pngs.get(image.stem), size, f"{record} frame {image.stem}")
            for image in images
        )
        return Sample(dataset=self.name, sample_id=sequence, frames=frames)

    def _frame(self, image: Path, png: Path | None, size: tuple[int, int], record: str) -> Frame:
        index = load_annotation(self, png, size, record) if png is not None else None
        if index is None:
            ignore = torch.zeros(0, dtype=torch.bool) if self.year == "2017" else None
            return Frame(image, no_instances(size), ignore=ignore, annotated=False)
        if self.year == "2016":
            foreground = index > 0
            masks = foreground[None] if foreground.any() else np.zeros((0, *size), dtype=bool)
            return Frame(image, mask_instances(masks, [1] * len(masks)))
        values = [int(v) for v in np.unique(index) if v != 0]
        # The void region goes last, so object instances keep ascending ids ahead of it.
        object_ids = [v for v in values if v != VOID]
        has_void = VOID in values
        masks = index[None] == np.asarray(object_ids + [VOID] * has_void)[:, None, None]
        instances = mask_instances(masks, object_ids + [VOID_TRACK_ID] * has_void)
        ignore = torch.tensor([False] * len(object_ids) + [True] * has_void, dtype=torch.bool)
        return Frame(image, instances, ignore=ignore)
