"""YouTube-VIS 2019 / 2021 and OVIS: video instance segmentation.

On disk, one json beside a folder of frames::

    {"videos": [{"id", "width", "height", "length", "file_names": [relative paths]}],
     "annotations": [{"id", "video_id", "category_id", "iscrowd", "areas",
                      "segmentations": [RLE | polygons | None, one per frame],
                      "bboxes": [[x, y, w, h] | None, one per frame]}],
     "categories": [{"id", "name"}]}

A segmentation is COCO RLE with compressed (str, or bytes) or uncompressed (list, as in some OVIS
releases) counts, or a list of polygons; None means the object is not in that frame, and so does an
empty mask. The box is the frame's bbox when given, else the mask's; a bbox past the image is
clipped to it (see :mod:`unipercept.data.datasets.base`). Labels index the categories in ascending
category-id order. A json without ``"annotations"`` (a test split) gives frames without instances
and ``annotated=False``; in an annotated json a video without annotations has empty, annotated
frames. Every frame carries ``masks`` and ``ignore`` (the annotations' ``iscrowd``). The image size
is the video's ``height``/``width``, or the first frame's header when the json has none; it is
assumed constant in a video.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import pycocotools.mask as mask_utils
import torch

from unipercept.data.datasets.base import DatasetError, DatasetReader, OnError
from unipercept.data.io import image_size, load_json
from unipercept.data.types import Frame, Sample
from unipercept.structures import RLE, Instances, RLEMasks, polygons_to_rle


def segmentation_rle(segmentation: Any, size: tuple[int, int]) -> RLE:
    """A frame's segmentation as a compressed RLE dict with ``str`` counts.

    Args:
        segmentation: RLE dict (``counts`` str, bytes-like or list) or a list of polygons.
        size: the frame's (height, width); an RLE of another size is refused.

    Raises:
        ValueError: malformed segmentation, or an RLE of another size.
    """
    if isinstance(segmentation, list):
        if not all(isinstance(polygon, list) for polygon in segmentation):
            raise ValueError("polygons must be a list of coordinate lists")
        return polygons_to_rle(segmentation, size)
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        raise ValueError(f"expected an RLE dict or polygons, got {type(segmentation).__name__}")
    rle_size = segmentation.get("size")
    if not isinstance(rle_size, list | tuple) or tuple(rle_size) != size:
        raise ValueError(f"mask size {rle_size} (height, width) differs from the frame's {size}")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        # pycocotools writes past its buffer when the runs do not cover the image: check first.
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != math.prod(size):
            raise ValueError(f"uncompressed RLE counts must be runs summing to {math.prod(size)}")
        counts = mask_utils.frPyObjects({"size": list(size), "counts": counts}, *size)["counts"]
    if isinstance(counts, bytes | bytearray | memoryview):
        counts = bytes(counts).decode("ascii")
    if not isinstance(counts, str):
        raise ValueError(f"RLE counts must be a str, bytes or list, got {type(counts).__name__}")
    return {"size": list(size), "counts": counts}


class YouTubeVisReader(DatasetReader):
    """Reads a YouTube-VIS / OVIS json as one :class:`Sample` per video, in json order.

    Bad data are reported through :meth:`problem`: a malformed video record, a ``length`` that
    disagrees with ``file_names``, or a first (existing) frame whose size disagrees with the json
    (kind ``"video"``, left out); a missing frame image (kind ``"frame"``, that frame is left out
    when ``check_images``); a malformed annotation, or one of an unknown video or category, or
    whose lists do not have one entry per frame (kind ``"annotation"``); a malformed or wrongly
    sized mask, or a malformed bbox or one wholly outside the frame, in one frame (kind
    ``"mask"``, that frame's entry is left out). A bbox overhanging the frame is clipped and
    counted in :attr:`changed`. A malformed json, or malformed categories, raise whatever
    ``on_error`` says.

    Args:
        annotations: the json file.
        videos: the folder that ``file_names`` are relative to.
        name: the dataset name given to samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
        check_images: check that every frame's file exists and the first frame's size.
    """

    def __init__(
        self,
        *,
        annotations: Path,
        videos: Path,
        name: str = "ytvis",
        on_error: OnError = "raise",
        check_images: bool = True,
    ) -> None:
        super().__init__(on_error=on_error)
        self.annotations = Path(annotations)
        self.videos = Path(videos)
        self.name = name
        self.check_images = check_images

    @cached_property
    def data(self) -> dict[str, Any]:
        """The parsed json.

        Raises:
            DatasetError: missing file, malformed json, or ``videos``, ``categories`` or
                ``annotations`` that are not lists (``annotations`` may be absent).
        """
        data = load_json(self.annotations)
        if not isinstance(data, dict):
            raise DatasetError(self.annotations, "file", "expected a json object")
        for key in ("videos", "categories", "annotations"):
            if not isinstance(data.get(key, []), list):
                raise DatasetError(self.annotations, key, "expected a list")
        return data

    @cached_property
    def category_ids(self) -> tuple[int, ...]:
        """The json's category ids, ascending; a label is an index into it."""
        ids = []
        for category in self.data["categories"]:
            if not isinstance(category, dict) or not isinstance(category.get("id"), int):
                raise DatasetError(self.annotations, f"category {category!r}", "expected an id")
            ids.append(category["id"])
        if len(set(ids)) != len(ids):
            raise DatasetError(self.annotations, "categories", "category ids repeat")
        return tuple(sorted(ids))

    @cached_property
    def categories(self) -> tuple[str, ...]:
        """Category names, in :attr:`category_ids` order."""
        names = {c["id"]: str(c.get("name", c["id"])) for c in self.data["categories"]}
        return tuple(names[i] for i in self.category_ids)

    def _read(self) -> Iterator[Sample]:
        annotated = "annotations" in self.data
        by_video = self._annotations_by_video() if annotated else {}
        for video in self.data["videos"]:
            vid = video.get("id") if isinstance(video, dict) else None
            sample = self._video(video, by_video.get(vid, []), annotated)
            if sample is not None:
                yield sample

    def _annotations_by_video(self) -> dict[int, list[dict[str, Any]]]:
        videos = {v.get("id") for v in self.data["videos"] if isinstance(v, dict)}
        labels = {category_id: i for i, category_id in enumerate(self.category_ids)}
        by_video: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in self.data["annotations"]:
            record = f"annotation {ann.get('id') if isinstance(ann, dict) else ann!r}"
            if not isinstance(ann, dict) or not isinstance(ann.get("segmentations"), list):
                self.problem(self.annotations, record, "expected segmentations", "annotation")
            elif ann.get("video_id") not in videos:
                problem = f"unknown video_id {ann.get('video_id')!r}"
                self.problem(self.annotations, record, problem, "annotation")
            elif ann.get("category_id") not in labels:
                problem = f"unknown category_id {ann.get('category_id')!r}"
                self.problem(self.annotations, record, problem, "annotation")
            elif not isinstance(ann.get("id"), int):
                self.problem(self.annotations, record, "id must be an int", "annotation")
            else:
                by_video[ann["video_id"]].append({**ann, "label": labels[ann["category_id"]]})
        return by_video

    def _video(
        self, video: Any, annotations: list[dict[str, Any]], annotated: bool
    ) -> Sample | None:
        vid = video.get("id") if isinstance(video, dict) else video
        record = f"video {vid}"
        names = video.get("file_names") if isinstance(video, dict) else None
        if not names or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            self.problem(self.annotations, record, "expected a list of file_names", "video")
            return None
        if video.get("length", len(names)) != len(names):
            problem = f"length {video['length']} but {len(names)} file_names"
            self.problem(self.annotations, record, problem, "video")
            return None
        images = [self.videos / name for name in names]
        keep = [True] * len(images)
        if self.check_images:
            for index, image in enumerate(images):
                if not image.is_file():
                    self.problem(image, f"{record} frame {index}", "image not found", "frame")
                    keep[index] = False
            if not any(keep):
                return None
        first = keep.index(True)
        size = self._size(video, images[first], f"{record} frame {first}")
        if size is None:
            return None
        entries = self._entries(annotations, len(images), size, record)
        frames = tuple(
            self._frame(images[i], entries[i], size, annotated)
            for i in range(len(images))
            if keep[i]
        )
        return Sample(
            dataset=self.name, sample_id=str(vid), frames=frames, categories=self.categories
        )

    def _size(self, video: dict[str, Any], first: Path, record: str) -> tuple[int, int] | None:
        """The video's (height, width): from the json, checked against the header of its first
        existing frame when ``check_images``; from that header when the json has none."""
        height, width = video.get("height"), video.get("width")
        given = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        if given is not None and not self.check_images:
            return given
        try:
            found = image_size(first)
        except DatasetError as error:
            self.problem(error.path, record, error.problem, "video")
            return None
        if given is not None and found != given:
            problem = f"image size {found} (height, width) differs from the json's {given}"
            self.problem(first, record, problem, "video")
            return None
        return found

    def _entries(
        self, annotations: list[dict[str, Any]], length: int, size: tuple[int, int], record: str
    ) -> list[list[tuple[dict[str, Any], RLE, torch.Tensor]]]:
        """Per frame, the (annotation, mask, xyxy box) of each object present in it."""
        entries: list[list[tuple[dict[str, Any], RLE, torch.Tensor]]] = [[] for _ in range(length)]
        for ann in sorted(annotations, key=lambda a: a["id"]):
            ann_record = f"{record} annotation {ann['id']}"
            bboxes = ann.get("bboxes")
            if len(ann["segmentations"]) != length or (
                bboxes is not None and (not isinstance(bboxes, list) or len(bboxes) != length)
            ):
                problem = f"expected one segmentation (and bbox) per frame, {length} frames"
                self.problem(self.annotations, ann_record, problem, "annotation")
                continue
            for index, segmentation in enumerate(ann["segmentations"]):
                if segmentation is None:
                    continue
                frame_record = f"{ann_record} frame {index}"
                try:
                    rle = segmentation_rle(segmentation, size)
                    x, y, w, h = self._xywh(rle, bboxes[index] if bboxes is not None else None)
                except ValueError as error:
                    self.problem(self.annotations, frame_record, str(error), "mask")
                    continue
                if mask_utils.area(rle) == 0:
                    continue  # an empty mask: the object is not in this frame
                box, why = self.clip_box((x, y, x + w, y + h), size)
                if why is not None:
                    self.problem(self.annotations, frame_record, why, "mask")
                    continue
                entries[index].append((ann, rle, torch.tensor(box, dtype=torch.float32)))
        return entries

    @staticmethod
    def _xywh(rle: RLE, bbox: Any) -> list[float]:
        """The ``x, y, w, h`` box: the bbox when given, else the mask's tight box."""
        if bbox is None:
            return mask_utils.toBbox(rle).tolist()
        if (
            isinstance(bbox, list)
            and len(bbox) == 4
            and all(isinstance(v, int | float) and math.isfinite(v) for v in bbox)
        ):
            return [float(v) for v in bbox]
        raise ValueError(f"bbox must be [x, y, w, h], got {bbox!r}")

    def _frame(
        self,
        image: Path,
        entries: list[tuple[dict[str, Any], RLE, torch.Tensor]],
        size: tuple[int, int],
        annotated: bool,
    ) -> Frame:
        instances = Instances(
            size,
            boxes=torch.stack([box for _, _, box in entries]) if entries else torch.zeros(0, 4),
            labels=torch.tensor([a["label"] for a, _, _ in entries], dtype=torch.int64),
            masks=RLEMasks([rle for _, rle, _ in entries], size),
            track_ids=torch.tensor([a["id"] for a, _, _ in entries], dtype=torch.int64),
        )
        ignore = torch.tensor([bool(a.get("iscrowd", 0)) for a, _, _ in entries], dtype=torch.bool)
        return Frame(image, instances, ignore=ignore, annotated=annotated)
