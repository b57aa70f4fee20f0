"""COCO-format instance annotations: COCO, LVIS and Objects365 all ship this json.

On-disk format, one json file::

    {"images": [{"id": int, "file_name": str, "height": int, "width": int}, ...],
     "annotations": [{"id": int, "image_id": int, "category_id": int,
                      "bbox": [x, y, w, h], "iscrowd": 0 | 1,
                      "segmentation": [[x1, y1, x2, y2, ...], ...]    # polygons, or
                                      | {"size": [h, w], "counts": str | [int, ...]}}, ...],
     "categories": [{"id": int, "name": str}, ...]}

and the images under one folder, at ``<images>/<file_name>``. Polygons and compressed RLE
(``counts`` a string) are the usual objects; crowd objects carry uncompressed RLE (``counts``
a list of run lengths). LVIS images have no ``file_name`` but a ``coco_url`` ending in
``<split>/<file>``, so their ``images`` folder is the one holding ``train2017/`` and
``val2017/``. LVIS has no ``iscrowd`` (all objects are positives) and lists, per image, the
categories that are not exhaustively annotated (``not_exhaustive_category_ids``) and those
verified absent (``neg_category_ids``); the reader keeps both, by image id, in category ids.
An image-info json without ``annotations`` (COCO test-dev) reads as unannotated images.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from unipercept.data.datasets.base import DatasetError, DatasetReader, OnError
from unipercept.data.io import load_json
from unipercept.data.types import Frame, Sample
from unipercept.structures import Instances
from unipercept.structures.masks import RLE, RLEMasks, polygons_to_rle


def _run_lengths(counts: str) -> list[int]:
    """Run lengths of COCO's compressed RLE string (pycocotools' ``rleFrString``): 5 bits per
    character from ``'0'``, bit 0x20 continues a number, bit 0x10 of its last character is the
    sign, and runs after the second are stored as differences to the run two before."""
    runs: list[int] = []
    value, shift = 0, 0
    for char in counts:
        code = ord(char) - 48
        if not 0 <= code < 64:
            raise ValueError(f"character {char!r} cannot occur in compressed RLE counts")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    if shift:
        raise ValueError("compressed RLE counts end in the middle of a number")
    return runs


def segmentation_to_rle(segmentation: Any, image_size: tuple[int, int]) -> RLE:
    """Checks a COCO segmentation and returns it as an RLE dict of ``image_size``.

    pycocotools decodes malformed RLE into garbage or reads past its buffer instead of
    failing, so the run lengths are checked here to cover the image exactly.

    Args:
        segmentation: polygons, or an RLE dict with compressed or uncompressed counts.
        image_size: (height, width) of the annotation's image.

    Returns:
        The RLE dict (uncompressed counts are left for :class:`RLEMasks` to compress).

    Raises:
        ValueError: the segmentation does not decode into a mask of ``image_size``.
    """
    height, width = image_size
    if isinstance(segmentation, list):
        if not segmentation or not all(isinstance(p, list) for p in segmentation):
            raise ValueError("polygons must be a non-empty list of coordinate lists")
        try:
            return polygons_to_rle(segmentation, image_size)
        except TypeError as error:
            raise ValueError(f"polygons hold non-numbers ({error})") from None
    if not isinstance(segmentation, dict) or {"size", "counts"} - segmentation.keys():
        raise ValueError(f"expected polygons or an RLE dict, got {type(segmentation).__name__}")
    if segmentation["size"] != [height, width]:
        raise ValueError(f"RLE size {segmentation['size']} is not the image's {[height, width]}")
    counts = segmentation["counts"]
    if isinstance(counts, str):
        runs = _run_lengths(counts)
    elif isinstance(counts, list) and all(isinstance(c, int) for c in counts):
        runs = counts
    else:
        raise ValueError("RLE counts must be a string or a list of integers")
    if any(run < 0 for run in runs) or sum(runs) != height * width:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, the image has {height * width}")
    return {"size": [height, width], "counts": counts}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Image(NamedTuple):
    id: int
    path: Path
    size: tuple[int, int]


class CocoReader(DatasetReader):
    """Reads COCO-format instance annotations, one :class:`Sample` per image.

    Labels index :attr:`categories`, the category names sorted by category id;
    ``category_ids[label]`` maps a label back to the json's ``category_id``. ``track_ids`` are
    the annotation ids, boxes are xyxy floats, and crowd objects (``iscrowd: 1``) stay in the
    frame flagged in ``Frame.ignore``. Images without annotations yield samples with empty
    instances (they are negatives for every category). Image sizes come from the json, not
    the image headers, so reading needs no image decoding.

    Bad records are reported through :meth:`DatasetReader.problem`: an annotation of an unknown
    image or category, a duplicate annotation id, a box with no area or wholly outside its
    image, or a segmentation that does not decode (each skips the annotation, kind
    ``"annotation"``); and an image record without id, file or size, or whose file is missing
    (each skips the image, kind ``"image"``). A box overhanging its image is clipped to it and
    counted in :attr:`changed` (see :mod:`unipercept.data.datasets.base`).

    Args:
        annotations: the json file.
        images: folder the images' ``file_name`` s are relative to.
        name: dataset name given to the samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
        masks: read segmentations as :class:`RLEMasks`; False reads boxes only (Objects365).
        check_images: check that every image file exists; False reads the annotations alone.

    Raises:
        DatasetError: the json is missing, malformed, or lacks ``images`` / ``categories``.
    """

    def __init__(
        self,
        *,
        annotations: Path,
        images: Path,
        name: str = "coco",
        on_error: OnError = "raise",
        masks: bool = True,
        check_images: bool = True,
    ) -> None:
        super().__init__(on_error=on_error)
        self.name = name
        self.path = Path(annotations)
        self.images = Path(images)
        self.masks = masks
        self.check_images = check_images
        data = load_json(self.path)
        if not isinstance(data, dict) or not all(
            isinstance(data.get(key), list) for key in ("images", "categories")
        ):
            raise DatasetError(
                self.path, "file", "expected an object with 'images' and 'categories'"
            )
        self._image_records: list[Any] = data["images"]
        self._annotation_records: list[Any] = data.get("annotations", [])
        categories = {}
        for category in data["categories"]:
            if not (isinstance(category, dict) and isinstance(category.get("id"), int)):
                raise DatasetError(self.path, f"category {category!r}", "has no integer id")
            if category["id"] in categories:
                raise DatasetError(self.path, f"category {category['id']}", "duplicate id")
            categories[category["id"]] = str(category.get("name", category["id"]))
        self.category_ids: tuple[int, ...] = tuple(sorted(categories))
        self.categories: tuple[str, ...] = tuple(categories[i] for i in self.category_ids)
        self._labels = {category_id: label for label, category_id in enumerate(self.category_ids)}
        # LVIS only: category ids per image id, for federated evaluation and sampling.
        self.not_exhaustive_category_ids: dict[int, tuple[int, ...]] = {}
        self.neg_category_ids: dict[int, tuple[int, ...]] = {}
        for record in self._image_records:
            if isinstance(record, dict):
                for key in ("not_exhaustive_category_ids", "neg_category_ids"):
                    if key in record:
                        getattr(self, key)[record.get("id")] = tuple(record[key])

    def _read(self) -> Iterator[Sample]:
        images = self._index_images()
        by_image = self._annotations_by_image(images)
        for image in images.values():
            sample = self._sample(image, by_image.get(image.id, []))
            if sample is not None:
                yield sample

    def _index_images(self) -> dict[int, _Image]:
        """The valid image records by id, in file order (shared with RefCocoReader)."""
        images: dict[int, _Image] = {}
        for index, record in enumerate(self._image_records):
            image_id = record.get("id") if isinstance(record, dict) else None
            name = f"image {image_id}" if isinstance(image_id, int) else f"images[{index}]"
            why = None
            if not isinstance(image_id, int):
                why = "has no integer id"
            elif image_id in images:
                why = "duplicate image id"
            elif not all(
                isinstance(record.get(k), int) and record[k] > 0 for k in ("height", "width")
            ):
                why = "has no positive integer height and width"
            file_name = record.get("file_name") if isinstance(record, dict) else None
            if file_name is None and isinstance(record, dict) and "coco_url" in record:
                # LVIS names images by URL only: ".../<split>/<file>" under the COCO root.
                file_name = "/".join(str(record["coco_url"]).split("/")[-2:])
            if why is None and not isinstance(file_name, str):
                why = "has no file_name"
            if why is not None:
                self.problem(self.path, name, why, "image")
                continue
            size = (record["height"], record["width"])
            images[image_id] = _Image(image_id, self.images / file_name, size)
        return images

    def _annotations_by_image(self, images: dict[int, _Image]) -> dict[int, list[dict]]:
        """Annotations with a known image and category and a unique id, grouped by image."""
        by_image: dict[int, list[dict]] = {}
        seen: set[int] = set()
        for index, record in enumerate(self._annotation_records):
            ann_id = record.get("id") if isinstance(record, dict) else None
            if not isinstance(ann_id, int):
                self.problem(self.path, f"annotations[{index}]", "has no integer id", "annotation")
                continue
            image_id, category_id = record.get("image_id"), record.get("category_id")
            why = None
            if ann_id in seen:
                why = "duplicate annotation id"
            elif image_id not in images:
                why = f"image_id {image_id!r} is not an image of this file"
            elif category_id not in self._labels:
                why = f"category_id {category_id!r} is not a category of this file"
            if why is not None:
                self.problem(self.path, f"annotation {ann_id}", why, "annotation")
                continue
            seen.add(ann_id)
            by_image.setdefault(image_id, []).append(record)
        return by_image

    def _sample(self, image: _Image, annotations: list[dict]) -> Sample | None:
        """The sample of one image, or None when its file is missing (shared with
        RefCocoReader)."""
        if self.check_images and not image.path.is_file():
            self.problem(self.path, f"image {image.id}", f"file {image.path} not found", "image")
            return None
        boxes, labels, ids, crowd, rles = [], [], [], [], []
        for record in annotations:
            name = f"annotation {record['id']} (image {image.id})"
            bbox = record.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
                self.problem(self.path, name, f"bbox {bbox!r} is not [x, y, w, h]", "annotation")
                continue
            x, y, w, h = bbox
            rle, why = None, None
            if self.masks:
                try:
                    rle = segmentation_to_rle(record.get("segmentation"), image.size)
                except ValueError as error:
                    why = f"segmentation does not decode: {error}"
            if why is None:
                # Last: a clipped box is counted only when its annotation is kept.
                box, why = self.clip_box((x, y, x + w, y + h), image.size)
            if why is not None:
                self.problem(self.path, name, why, "annotation")
                continue
            boxes.append(box)
            labels.append(self._labels[record["category_id"]])
            ids.append(record["id"])
            crowd.append(bool(record.get("iscrowd", 0)))
            rles.append(rle)
        instances = Instances(
            image.size,
            boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor(labels, dtype=torch.int64),
            track_ids=torch.tensor(ids, dtype=torch.int64),
            masks=RLEMasks(rles, image.size) if self.masks else None,
        )
        frame = Frame(image.path, instances, ignore=torch.tensor(crowd, dtype=torch.bool))
        return Sample(self.name, str(image.id), (frame,), self.categories)
