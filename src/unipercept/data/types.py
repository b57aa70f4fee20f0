"""Typed samples that dataset readers yield: one frame for an image, many for a video.

Samples are light: a frame holds its image's path, not its pixels, and masks stay COCO RLE
until a transform needs them dense. :func:`unipercept.data.io.load_image` reads the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from unipercept.structures import Instances


@dataclass(frozen=True, eq=False)
class Frame:
    """One image, or one frame of a video, with what is annotated in it.

    Attributes:
        image: path of the image file.
        instances: annotations in pixels of this image: ``boxes`` (xyxy), ``labels`` (indices
            into the sample's ``categories``), ``masks`` (:class:`RLEMasks`, or None for box-only
            data), ``track_ids`` (object identity: the annotation id in images, the track id in
            videos). ``image_size`` is the image's (height, width).
        ignore: (N,) bool, True for crowd / ignore regions that are neither positives nor
            negatives; None when the dataset has none.
        annotated: False for frames of a sparsely annotated video that carry no labels (their
            instances are empty but objects may be there).
    """

    image: Path
    instances: Instances
    ignore: Tensor | None = None
    annotated: bool = True

    def __post_init__(self) -> None:
        if self.ignore is not None and self.ignore.shape != (len(self.instances),):
            raise ValueError(
                f"Frame.ignore has shape {tuple(self.ignore.shape)}, expected "
                f"({len(self.instances)},) for {self.image}"
            )

    @property
    def image_size(self) -> tuple[int, int]:
        return self.instances.image_size


@dataclass(frozen=True)
class Expression:
    """A referring expression and the object(s) it names.

    Attributes:
        text: the sentence.
        target_ids: ``track_ids`` of the objects it refers to (one for RefCOCO; R-VOS
            expressions name one track).
    """

    text: str
    target_ids: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Sample:
    """One image (one frame) or one video (its frames in order), ready to be sampled from.

    Attributes:
        dataset: the reader's name (e.g. ``"coco"``, ``"davis2017"``).
        sample_id: the image or video id in the dataset's own files.
        frames: the frames, in time order.
        categories: names of the labels (labels index into it); ``()`` for class-agnostic data
            such as SOT and VOS.
        expressions: referring expressions about this image or video.
    """

    dataset: str
    sample_id: str
    frames: tuple[Frame, ...]
    categories: tuple[str, ...] = ()
    expressions: tuple[Expression, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError(f"{self.dataset} sample {self.sample_id} has no frames")
        for expression in self.expressions:
            known = {
                int(i)
                for f in self.frames
                if f.instances.track_ids is not None
                for i in f.instances.track_ids.tolist()
            }
            missing = set(expression.target_ids) - known
            if missing:
                raise ValueError(
                    f"{self.dataset} sample {self.sample_id}: expression "
                    f"{expression.text!r} names objects {sorted(missing)} that no "
                    "frame annotates"
                )

    @property
    def is_video(self) -> bool:
        return len(self.frames) > 1


def empty_instances(image_size: tuple[int, int]) -> Instances:
    """Instances with no objects but every field typed, for unannotated or empty frames."""
    return Instances(
        image_size,
        boxes=torch.zeros(0, 4),
        labels=torch.zeros(0, dtype=torch.int64),
        track_ids=torch.zeros(0, dtype=torch.int64),
    )
