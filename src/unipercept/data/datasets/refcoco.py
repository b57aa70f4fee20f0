"""RefCOCO, RefCOCO+ and RefCOCOg: referring expressions about COCO train2014 objects.

On-disk format (as released by the refer toolkit): a pickle of refs, ``refs(unc).p`` for
RefCOCO and RefCOCO+, ``refs(umd).p`` or ``refs(google).p`` for RefCOCOg, a list of::

    {"ref_id": int, "ann_id": int, "image_id": int, "category_id": int,
     "split": "train" | "val" | "test" | "testA" | "testB",
     "sentences": [{"sent": str, "raw": str, "tokens": [str, ...], "sent_id": int}, ...],
     "sent_ids": [int, ...], "file_name": str}

beside ``instances.json``, COCO-format annotations of the images the refs use (read with
:class:`~unipercept.data.datasets.coco.CocoReader`), and the COCO train2014 images. The pickle
holds only plain data, so it is read with
:func:`~unipercept.data.io.load_plain_pickle`, which refuses any class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unipercept.data.datasets.base import DatasetError, DatasetReader, OnError
from unipercept.data.datasets.coco import CocoReader
from unipercept.data.io import load_plain_pickle
from unipercept.data.types import Expression, Sample

SPLITS = ("train", "val", "test", "testA", "testB")


class RefCocoReader(DatasetReader):
    """Reads RefCOCO-style referring expressions, one :class:`Sample` per image.

    A sample holds every annotation of its image (so the objects not referred to are there
    as negatives), with masks, labels and ``track_ids`` as :class:`CocoReader` gives them
    (``track_ids`` are annotation ids), and one :class:`Expression` per sentence of each of
    the image's refs in ``split``, whose ``target_ids`` is the ref's ``(ann_id,)``. The text
    is the sentence's ``"sent"`` (the refer toolkit's lower-cased, tokenised form), or its
    ``"raw"`` when ``"sent"`` is absent. Images without refs in the split are not read.

    A ref naming an annotation or image that ``instances.json`` lacks, or whose annotation
    was skipped as bad data, or with no usable sentence, is reported through
    :meth:`DatasetReader.problem` (kind ``"ref"``); bad annotations and images are reported as
    :class:`CocoReader` does.

    Args:
        refs: the refs pickle.
        instances: the ``instances.json`` next to it.
        images: folder of the COCO train2014 images.
        split: one of ``train``, ``val``, ``test``, ``testA``, ``testB``; None reads all refs.
        name: dataset name given to the samples.
        on_error: ``"raise"`` or ``"skip"`` bad records.
        check_images: check that every image file exists.

    Raises:
        DatasetError: an unreadable pickle (including one that references any class), or one
            that is not a list of ref dicts; malformed ``instances.json``.
        ValueError: ``split`` is unknown or the file has no ref of that split.
    """

    def __init__(
        self,
        *,
        refs: Path,
        instances: Path,
        images: Path,
        split: str | None = None,
        name: str = "refcoco",
        on_error: OnError = "raise",
        check_images: bool = True,
    ) -> None:
        super().__init__(on_error=on_error)
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        self.name = name
        self.path = Path(refs)
        self.split = split
        data = load_plain_pickle(self.path)
        if not isinstance(data, list) or not all(isinstance(ref, dict) for ref in data):
            raise DatasetError(self.path, "file", "expected a list of ref dicts")
        self._refs: list[dict[str, Any]] = data
        if split is not None and not any(ref.get("split") == split for ref in data):
            found = sorted({str(ref.get("split")) for ref in data})
            raise ValueError(f"{self.path} has no ref of split {split!r} (it has {found})")
        self.coco = CocoReader(
            annotations=instances,
            images=images,
            name=name,
            on_error=on_error,
            check_images=check_images,
        )
        self.categories = self.coco.categories
        self.category_ids = self.coco.category_ids

    def _read(self) -> Iterator[Sample]:
        # The COCO reader reports its problems (and clipped boxes) into this reader's counts.
        self.share_counters(self.coco)
        images = self.coco._index_images()
        by_image = self.coco._annotations_by_image(images)
        ann_image = {ann["id"]: image_id for image_id, anns in by_image.items() for ann in anns}
        refs_by_image: dict[int, list[tuple[str, int, list[str]]]] = {}
        for index, ref in enumerate(self._refs):
            if self.split is not None and ref.get("split") != self.split:
                continue
            name = f"ref {ref.get('ref_id', f'#{index}')}"
            ann_id, image_id = ref.get("ann_id"), ref.get("image_id")
            texts = [
                s.get("sent", s.get("raw")) if isinstance(s, dict) else None
                for s in ref.get("sentences") or [None]
            ]
            why = None
            if image_id not in images:
                why = f"image_id {image_id!r} is not an image of {self.coco.path}"
            elif ann_id not in ann_image:
                why = f"ann_id {ann_id!r} is not an annotation of {self.coco.path}"
            elif ann_image[ann_id] != image_id:
                why = f"ann_id {ann_id} belongs to image {ann_image[ann_id]}, not {image_id}"
            elif not all(isinstance(text, str) and text for text in texts):
                why = "has a missing or empty sentence"
            if why is not None:
                self.problem(self.path, name, why, "ref")
                continue
            refs_by_image.setdefault(image_id, []).append((name, ann_id, texts))
        for image in images.values():
            if image.id not in refs_by_image:
                continue
            sample = self.coco._sample(image, by_image[image.id])
            if sample is None:
                continue
            kept = set(sample.frames[0].instances.track_ids.tolist())
            expressions = []
            for name, ann_id, texts in refs_by_image[image.id]:
                if ann_id not in kept:
                    self.problem(self.path, name, f"its annotation {ann_id} was skipped", "ref")
                    continue
                expressions.extend(Expression(text, (ann_id,)) for text in texts)
            if expressions:
                yield dataclasses.replace(sample, expressions=tuple(expressions))
