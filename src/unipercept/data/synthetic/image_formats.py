"""Writers of the image datasets: COCO instances and RefCOCO (UNC refs), which share the same
images and annotations.

Layout::

    coco/annotations/instances_{train,val}.json
    coco/{train,val}/000000000001.jpg
    refcoco/refs(unc).p
    refcoco/instances.json
    refcoco/images/COCO_train2014_000000000001.jpg
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .encoding import mask_box, polygon_area, polygons, rle_compressed, rle_uncompressed
from .scenes import ImageSample
from .world import CATEGORIES

Split = Literal["train", "val"]
# Every RLE_EVERY-th annotation is stored as a compressed RLE even where a polygon would do,
# so that readers meet both encodings.
RLE_EVERY = 5
MAX_REFS_PER_IMAGE = 3
# RefCOCO splits held-out images into val, testA (people in the original) and testB (other
# objects); here the held-out images are dealt round-robin.
_HELD_OUT_SPLITS = ("val", "testA", "testB")
_INFO = {
    "description": "unipercept synthetic shapes world",
    "version": "1.0",
    "year": 2024,
    "contributor": "unipercept.data.synthetic",
    "date_created": "2024-01-01 00:00:00",
}


def categories() -> list[dict[str, Any]]:
    """COCO ``categories``: ids 1..6 in :data:`CATEGORIES` order."""
    return [
        {"id": index, "name": name, "supercategory": "shape"}
        for index, name in enumerate(CATEGORIES, start=1)
    ]


def write_json(path: Path, content: Any) -> None:
    """Compact json, as the datasets ship it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, separators=(",", ":")), encoding="utf-8")


@dataclass
class CocoRefcocoWriter:
    """Collects images and writes them as COCO and RefCOCO.

    Image and annotation ids are unique over both splits (as in COCO), and RefCOCO's
    ``instances.json`` holds every image of both, as RefCOCO's refs all point into COCO
    train2014.

    Attributes:
        root: the generation's root folder; ``coco/`` and ``refcoco/`` are made under it.
    """

    root: Path
    _images: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _annotations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _refs: list[dict[str, Any]] = field(default_factory=list)
    _held_out_images: int = 0
    _sentences: int = 0

    def add(self, split: Split, sample: ImageSample, jpeg: bytes) -> None:
        """Writes the image files and records its annotations and refs.

        Args:
            split: the COCO split.
            sample: the rendered image.
            jpeg: its encoded bytes (written to both datasets).
        """
        image_id = sum(len(images) for images in self._images.values()) + 1
        height, width = sample.image.shape[:2]
        coco_name = f"{image_id:012d}.jpg"
        refcoco_name = f"COCO_train2014_{image_id:012d}.jpg"
        for path in (
            self.root / "coco" / split / coco_name,
            self.root / "refcoco" / "images" / refcoco_name,
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg)
        self._images.setdefault(split, []).append(
            {"id": image_id, "file_name": coco_name, "height": height, "width": width}
        )
        annotations = self._annotations.setdefault(split, [])
        first_id = sum(len(anns) for anns in self._annotations.values()) + 1
        ann_ids = []
        for offset, obj in enumerate(sample.objects):
            ann_id = first_id + offset
            ann_ids.append(ann_id)
            category_id = CATEGORIES.index(obj.shape.category) + 1
            annotations.append(self._annotation(ann_id, image_id, category_id, obj.mask))
        if sample.crowd is not None:
            crowd_id = first_id + len(sample.objects)
            category_id = CATEGORIES.index(sample.crowd.category) + 1
            crowd = {
                "id": crowd_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": rle_uncompressed(sample.crowd.mask),
                "area": int(sample.crowd.mask.sum()),
                "bbox": mask_box(sample.crowd.mask),
                "iscrowd": 1,
            }
            annotations.append(crowd)
        if split == "train":
            ref_split = "train"
        else:
            ref_split = _HELD_OUT_SPLITS[self._held_out_images % len(_HELD_OUT_SPLITS)]
            self._held_out_images += 1
        referred = [k for k, obj in enumerate(sample.objects) if obj.expressions]
        for k in referred[:MAX_REFS_PER_IMAGE]:
            self._add_ref(sample, k, ann_ids[k], image_id, ref_split)

    @staticmethod
    def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
        """A COCO instance annotation: a polygon when one is exact, else a compressed RLE."""
        height, width = mask.shape
        outlines = None if ann_id % RLE_EVERY == 0 else polygons(mask)
        if outlines is None:
            segmentation: Any = rle_compressed(mask)
            area = int(mask.sum())
        else:
            segmentation = outlines
            area = polygon_area(outlines, height, width)
        return {
            "id": ann_id,
            "image_id": image_id,
            "category_id": category_id,
            "segmentation": segmentation,
            "area": area,
            "bbox": mask_box(mask),
            "iscrowd": 0,
        }

    def _add_ref(
        self, sample: ImageSample, index: int, ann_id: int, image_id: int, split: str
    ) -> None:
        """A RefCOCO ref: plain dicts, lists, strings and ints only, as in ``refs(unc).p``."""
        obj = sample.objects[index]
        ref_id = len(self._refs)
        sentences = []
        for text in obj.expressions:
            sentences.append(
                {"tokens": text.split(), "raw": text, "sent_id": self._sentences, "sent": text}
            )
            self._sentences += 1
        self._refs.append(
            {
                "sent_ids": [sentence["sent_id"] for sentence in sentences],
                # RefCOCO's ref file names carry a suffix after the image's own name; readers
                # find the image through ``image_id`` in instances.json.
                "file_name": f"COCO_train2014_{image_id:012d}_{ref_id}.jpg",
                "ann_id": ann_id,
                "ref_id": ref_id,
                "image_id": image_id,
                "split": split,
                "sentences": sentences,
                "category_id": CATEGORIES.index(obj.shape.category) + 1,
            }
        )

    def finish(self) -> tuple[int, int]:
        """Writes the json and pickle files.

        Returns:
            (number of annotations, number of refs).
        """
        for split, images in self._images.items():
            write_json(
                self.root / "coco" / "annotations" / f"instances_{split}.json",
                {
                    "info": _INFO,
                    "licenses": [],
                    "images": images,
                    "annotations": self._annotations[split],
                    "categories": categories(),
                },
            )
        all_images = [
            {**image, "file_name": f"COCO_train2014_{image['id']:012d}.jpg"}
            for images in self._images.values()
            for image in images
        ]
        all_annotations = [ann for anns in self._annotations.values() for ann in anns]
        write_json(
            self.root / "refcoco" / "instances.json",
            {
                "info": _INFO,
                "licenses": [],
                "images": all_images,
                "annotations": all_annotations,
                "categories": categories(),
            },
        )
        with (self.root / "refcoco" / "refs(unc).p").open("wb") as handle:
            pickle.dump(self._refs, handle, protocol=2)
        return len(all_annotations), len(self._refs)
