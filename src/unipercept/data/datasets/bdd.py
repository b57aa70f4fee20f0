"""BDD100K box tracking (MOT) and segmentation tracking (MOTS), in the Scalabel json format.

On-disk format: a folder of json files, normally one per video (or one json), each a list of
frames (or ``{"frames": [...]}``)::

    [{"name": "<video>-0000001.jpg", "videoName": "<video>", "frameIndex": 0,
      "labels": [{"id": "17", "category": "car",
                  "box2d": {"x1": float, "y1": float, "x2": float, "y2": float},
                  "rle": {"size": [720, 1280], "counts": str},          # MOTS only
                  "attributes": {"occluded": bool, "truncated": bool, "crowd": bool}},
                 ...]},
     ...]

with the frames at ``<images>/<videoName>/<name>``. Scalabel's ``box2d`` corners are
inclusive pixel indices (its evaluation takes the width as ``x2 - x1 + 1``), so the boxes read
here are ``(x1, y1, x2 + 1, y2 + 1)`` in the continuous xyxy convention. MOTS masks are read
from the Scalabel RLE json (``rle`` per label); the per-frame PNG ``bitmasks`` release is not
read (convert it to RLE json with BDD100K's ``to_rle`` first).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pycocotools.mask as mask_utils
import torch

from unipercept.data.datasets.base import DatasetError, DatasetReader, OnError
from unipercept.data.datasets.coco import segmentation_to_rle
from unipercept.data.io import image_size as read_image_size
from unipercept.data.io import load_json
from unipercept.data.types import Frame, Sample
from unipercept.structures import Instances
from unipercept.structures.masks import RLEMasks

TRACKING_CATEGORIES = (
    "pedestrian",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)


class Bdd100kReader(DatasetReader):
    """Reads BDD100K MOT / MOTS labels, one :class:`Sample` per video, frames in
    ``frameIndex`` order.

    Labels index ``categories``. Labels of other categories (``"other person"``,
    ``"other vehicle"``, ``"trailer"``) are dropped: BDD100K's evaluation only uses them as
    regions where predictions are not counted, which is not reproduced here. Labels whose
    ``crowd`` or ``ignored`` attribute is set stay as instances flagged in ``Frame.ignore``
    (as Scalabel's COCO conversion marks them ``iscrowd``). The string track ids become
    integers ``1, 2, ...`` in order of first appearance within each video;
    ``track_names[video][k - 1]`` is the original id of track ``k``. A video's frames must be
    in one json file. With ``masks``, a label without ``box2d`` gets its mask's tight box.

    Bad records are reported through :meth:`DatasetReader.problem`: a frame record without
    ``name`` / ``videoName`` / ``frameIndex``, with a repeated ``frameIndex``, or whose image
    is missing (kind ``"frame"``, the frame is left out); a label without an id, with an id
    repeated in its frame, a box with no area or wholly outside the image, or (with ``masks``)
    a missing or undecodable ``rle`` (kind ``"label"``, the label is left out). A box
    overhanging the image is clipped to it and counted in :attr:`changed` (see
    :mod:`unipercept.data.datasets.base`).

    Args:
        labels: a folder of json files, or one json file.
        images: folder holding one folder of frames per video.
        categories: the categories to keep, in label order.
        masks: read MOTS masks as :class:`RLEMasks`; False reads boxes only.
        image_size: (height, width) of every frame; checked against the first image read.
        name: dataset name given to the samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
        check_images: check that every frame's image exists and the first one's size.

    Raises:
        DatasetError: no json in ``labels``, a malformed json, or a frame size other than
            ``image_size`` (on iteration).
    """

    def __init__(
        self,
        *,
        labels: Path,
        images: Path,
        categories: Sequence[str] = TRACKING_CATEGORIES,
        masks: bool = False,
        image_size: tuple[int, int] = (720, 1280),
        name: str = "bdd100k",
        on_error: OnError = "raise",
        check_images: bool = True,
    ) -> None:
        super().__init__(on_error=on_error)
        self.name = name
        labels = Path(labels)
        self.files = sorted(labels.glob("*.json")) if labels.is_dir() else [labels]
        if not self.files:
            raise DatasetError(labels, "folder", "holds no json label files")
        self.images = Path(images)
        self.categories = tuple(categories)
        self._labels = {category: label for label, category in enumerate(self.categories)}
        self.masks = masks
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.check_images = check_images
        self.track_names: dict[str, tuple[str, ...]] = {}

    def _read(self) -> Iterator[Sample]:
        size_checked = not self.check_images
        for path in self.files:
            data = load_json(path)
            records = data.get("frames") if isinstance(data, dict) else data
            if not isinstance(records, list):
                raise DatasetError(path, "file", "expected a list of frames or {'frames': [...]}")
            videos: dict[str, list[dict[str, Any]]] = {}
            for index, record in enumerate(records):
                if not (
                    isinstance(record, dict)
                    and isinstance(record.get("name"), str)
                    and isinstance(record.get("videoName"), str)
                    and isinstance(record.get("frameIndex"), int)
                ):
                    why = "needs a string name and videoName and an integer frameIndex"
                    self.problem(path, f"frames[{index}]", why, "frame")
                    continue
                videos.setdefault(record["videoName"], []).append(record)
            for video, frame_records in videos.items():
                frame_records.sort(key=lambda record: record["frameIndex"])
                track_ids: dict[str, int] = {}
                frames, seen = [], set()
                for record in frame_records:
                    name = f"video {video} frame {record['frameIndex']}"
                    image = self.images / video / record["name"]
                    if record["frameIndex"] in seen:
                        self.problem(path, name, "frameIndex repeated", "frame")
                        continue
                    seen.add(record["frameIndex"])
                    if self.check_images and not image.is_file():
                        self.problem(path, name, f"image file {image} not found", "frame")
                        continue
                    if not size_checked:
                        size = read_image_size(image)
                        if size != self.image_size:
                            why = f"image is {size} (HxW), the reader expects {self.image_size}"
                            raise DatasetError(image, name, why)
                        size_checked = True
                    frames.append(self._frame(path, name, record, image, track_ids))
                self.track_names[video] = tuple(track_ids)
                if frames:
                    yield Sample(self.name, video, tuple(frames), self.categories)

    def _frame(
        self, path: Path, name: str, record: dict, image: Path, track_ids: dict[str, int]
    ) -> Frame:
        boxes, labels, ids, ignore, rles = [], [], [], [], []
        frame_ids: set[str] = set()
        for index, label in enumerate(record.get("labels") or []):
            if not isinstance(label, dict) or label.get("category") not in self._labels:
                continue
            label_id = label.get("id")
            label_name = f"{name} label {label_id if label_id is not None else f'#{index}'}"
            if not isinstance(label_id, str | int):
                box, rle, why = [], None, "has no id"
            elif str(label_id) in frame_ids:
                box, rle, why = [], None, "id repeated in the frame"
            else:
                # Last: a clipped box is counted only when its label is kept.
                box, rle, why = self._geometry(label)
            if why is not None:
                self.problem(path, label_name, why, "label")
                continue
            frame_ids.add(str(label_id))
            attributes = label.get("attributes") or {}
            boxes.append(box)
            labels.append(self._labels[label["category"]])
            ids.append(track_ids.setdefault(str(label_id), len(track_ids) + 1))
            ignore.append(bool(attributes.get("crowd") or attributes.get("ignored")))
            rles.append(rle)
        instances = Instances(
            self.image_size,
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor(labels, dtype=torch.int64),
            track_ids=torch.tensor(ids, dtype=torch.int64),
            masks=RLEMasks(rles, self.image_size) if self.masks else None,
        )
        return Frame(image, instances, ignore=torch.tensor(ignore, dtype=torch.bool))

    def _geometry(self, label: dict) -> tuple[list[float], dict | None, str | None]:
        """The label's xyxy box and (with ``masks``) RLE, or why they cannot be read."""
        rle = None
        if self.masks:
            if not isinstance(label.get("rle"), dict):
                return [], None, "has no rle mask"
            try:
                rle = segmentation_to_rle(label["rle"], self.image_size)
            except ValueError as error:
                return [], None, f"rle does not decode: {error}"
        box2d = label.get("box2d")
        if isinstance(box2d, dict):
            try:
                x1, y1, x2, y2 = (float(box2d[key]) for key in ("x1", "y1", "x2", "y2"))
            except (KeyError, TypeError, ValueError):
                return [], None, f"box2d {box2d!r} needs numbers x1, y1, x2, y2"
            box, why = self.clip_box((x1, y1, x2 + 1, y2 + 1), self.image_size)
            return box, rle, why
        if rle is None:
            return [], None, "has no box2d"
        x, y, w, h = mask_utils.toBbox(RLEMasks([rle], self.image_size).rles)[0].tolist()
        if w <= 0 or h <= 0:
            return [], None, "has no box2d and an empty mask"
        return [x, y, x + w, y + h], rle, None
