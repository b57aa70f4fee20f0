"""YouTube-VOS 2018 and 2019: video object segmentation with sparse, categorised masks.

On disk::

    root/<split>/
      JPEGImages/<video>/<frame>.jpg       (natural order: 2.jpg before 10.jpg)
      Annotations/<video>/<frame>.png      palette PNG, index = object id, 0 = background
      meta.json    {"videos": {video: {"objects": {"<obj_id>": {"category": str,
                                                                  "frames": ["00000", ...]}}}}}

Masks are sparse: in ``train_all_frames`` only every 5th frame has a PNG, and in ``valid`` a
video's PNGs hold each object only in the frame where it first appears. Frames without a PNG
have no instances and ``annotated=False``; with ``all_frames=False`` they are not listed.
``categories`` is the sorted set of the meta's category names; the ``valid`` meta names none,
which makes the data class-agnostic (``categories == ()``, labels 0).

An object id painted in a PNG but missing from ``meta.json`` is a contradiction between the two
files, so it is reported as bad data (kind ``"object"``): ``on_error="raise"`` raises, naming
the PNG, the video and frame, and the id; ``"skip"`` leaves that mask out. The image size comes
from the first frame's header and is assumed constant in a video.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from unipercept.data.datasets.base import DatasetError, DatasetReader, OnError
from unipercept.data.datasets.davis import (
    frame_annotations,
    load_annotation,
    mask_instances,
    no_instances,
)
from unipercept.data.io import image_size, load_json
from unipercept.data.types import Frame, Sample
from unipercept.data.video import image_files


class YouTubeVosReader(DatasetReader):
    """Reads one YouTube-VOS split as one :class:`Sample` per video (sorted by video id).

    Bad data are reported through :meth:`problem`: a video missing from ``meta.json``, without
    frame images or without its annotation folder (kind ``"video"``, left out); an object entry of
    ``meta.json`` without a usable id or category (kind ``"object"``, its masks are left out); an
    annotation that cannot be decoded, has no image, or whose size differs from the frame's
    (kind ``"annotation"``: the frame stays, unannotated); an id in a PNG that the meta does not
    list (kind ``"object"``). A malformed ``meta.json`` raises whatever ``on_error`` says.

    Args:
        root: the dataset folder holding ``<split>/``.
        split: ``"train"``, ``"train_all_frames"``, ``"valid"``, ...
        name: the dataset name given to samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
        all_frames: also list the frames that have no PNG (unannotated).
    """

    def __init__(
        self,
        *,
        root: Path,
        split: str = "train",
        name: str = "ytvos",
        on_error: OnError = "raise",
        all_frames: bool = True,
    ) -> None:
        super().__init__(on_error=on_error)
        self.root = Path(root)
        self.split = split
        self.name = name
        self.all_frames = all_frames

    @property
    def meta_path(self) -> Path:
        return self.root / self.split / "meta.json"

    @cached_property
    def meta(self) -> dict[str, Any]:
        """``meta.json``'s videos, by id.

        Raises:
            DatasetError: the file is missing, not json, or has no ``"videos"`` object.
        """
        data = load_json(self.meta_path)
        if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
            raise DatasetError(self.meta_path, "videos", 'expected {"videos": {video: {...}}}')
        return data["videos"]

    @cached_property
    def categories(self) -> tuple[str, ...]:
        """Sorted category names of the meta's objects; ``()`` when it names none."""
        names = {
            obj.get("category")
            for entry in self.meta.values()
            if isinstance(entry, dict) and isinstance(entry.get("objects"), dict)
            for obj in entry["objects"].values()
            if isinstance(obj, dict)
        }
        return tuple(sorted(name for name in names if isinstance(name, str)))

    def video_ids(self) -> list[str]:
        """The ids of the meta's videos, sorted."""
        return sorted(self.meta)

    def _read(self) -> Iterator[Sample]:
        for video_id in self.video_ids():
            sample = self.read_video(video_id)
            if sample is not None:
                yield sample

    def read_video(self, video_id: str) -> Sample | None:
        """One video as a :class:`Sample`, or None when it is skipped as bad data.

        Args:
            video_id: the video's folder name and ``meta.json`` key.

        Returns:
            The sample, or None (``on_error="skip"`` only).
        """
        record = f"video {video_id}"
        if video_id not in self.meta:
            self.problem(self.meta_path, record, "video not listed", "video")
            return None
        labels = self._objects(video_id, self.meta[video_id])
        images_dir = self.root / self.split / "JPEGImages" / video_id
        annotations_dir = self.root / self.split / "Annotations" / video_id
        images = image_files(images_dir)
        if not images:
            self.problem(images_dir, record, "no frame images (folder missing or empty)", "video")
            return None
        if not annotations_dir.is_dir():
            self.problem(annotations_dir, record, "annotation folder not found", "video")
            return None
        pngs = frame_annotations(self, images, annotations_dir, record)
        if not self.all_frames:
            images = [image for image in images if image.stem in pngs]
            if not images:
                self.problem(annotations_dir, record, "no annotated frame", "video")
                return None
        try:
            size = image_size(images[0])
        except DatasetError as error:
            self.problem(error.path, record, error.problem, "video")
            return None
        frames = tuple(
            self._frame(image, pngs.get(image.stem), size, labels, f"{record} frame {image.stem}")
            for image in images
        )
        return Sample(
            dataset=self.name, sample_id=video_id, frames=frames, categories=self.categories
        )

    def _objects(self, video_id: str, entry: Any) -> dict[int, int | None]:
        """Label index by object id; None marks an object whose meta entry was bad."""
        record = f"video {video_id}"
        if not isinstance(entry, dict) or not isinstance(entry.get("objects"), dict):
            self.problem(self.meta_path, record, 'expected {"objects": {id: {...}}}', "video")
            return {}
        labels: dict[int, int | None] = {}
        for key, obj in entry["objects"].items():
            try:
                object_id = int(key)
            except ValueError:
                self.problem(self.meta_path, f"{record} object {key!r}", "id is no int", "object")
                continue
            category = obj.get("category") if isinstance(obj, dict) else None
            if not self.categories:
                labels[object_id] = 0
            elif category in self.categories:
                labels[object_id] = self.categories.index(category)
            else:
                self.problem(self.meta_path, f"{record} object {key}", "has no category", "object")
                labels[object_id] = None
        return labels

    def _frame(
        self,
        image: Path,
        png: Path | None,
        size: tuple[int, int],
        labels: dict[int, int | None],
        record: str,
    ) -> Frame:
        index = load_annotation(self, png, size, record) if png is not None else None
        if index is None:
            return Frame(image, no_instances(size), annotated=False)
        object_ids = []
        for value in (int(v) for v in np.unique(index) if v != 0):
            if value not in labels:
                self.problem(
                    png,
                    record,
                    f"object id {value} is not listed in {self.meta_path}",
                    "object",
                )
            elif labels[value] is not None:
                object_ids.append(value)
        masks = index[None] == np.asarray(object_ids, dtype=np.uint8)[:, None, None]
        return Frame(image, mask_instances(masks, object_ids, [labels[i] for i in object_ids]))
