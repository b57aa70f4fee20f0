"""The data a fine-tune reads (``finetune.format``): its files checked before any work, the
training part as a :class:`~unipercept.data.DatasetSpec`, and the held-out part's scorer.

- ``coco``: ``data.json`` (COCO instances), ``data.images``; held out: ``data.val_json`` (and
  ``data.val_images``) or ``data.val_fraction`` of the images; score: mask AP (box AP when the
  annotations have no masks).
- ``refcoco``: ``data.refs`` (the refs pickle), ``data.json`` (its instances json),
  ``data.images``, ``data.split``; held out: ``data.val_split`` or ``data.val_fraction`` of the
  split's images; score: P@0.5.
- ``ytvis``: ``data.json`` (YouTube-VIS), ``data.images`` (its frames); held out:
  ``data.val_json`` (and ``data.val_images``) or ``data.val_fraction`` of the videos; score: VIS
  AP.
- ``mot``: ``data.root`` (MOTChallenge sequences); held out: ``data.val_root`` or
  ``data.val_fraction`` of the sequences; score: HOTA.

Category names come from the data: the model is prompted with them, so they must be distinct.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from unipercept.data.datasets.base import DatasetError
from unipercept.data.io import load_json, load_plain_pickle, write_text_atomic
from unipercept.data.spec import DatasetSpec
from unipercept.finetune.scoring import CocoScore, MotScore, ReferringScore, Resolution, VisScore
from unipercept.finetune.split import coco_subset, held_out, split_record, ytvis_subset
from unipercept.train import ConfigurationError

logger = logging.getLogger(__name__)

NAME = "finetune"  # the dataset's name in the mixture and the logs
HELD_OUT_DIR = "finetune"  # <output_dir>/finetune/: split.json, heldout.json
Scorer = Callable[[nn.Module], float]


def _path(value: Any, key: str, what: str) -> Path:
    if value is None or value == "":
        raise ConfigurationError(f"{key}: not given; finetune needs {key}=<{what}>")
    return Path(str(value)).expanduser()


def _file(value: Any, key: str, what: str) -> Path:
    path = _path(value, key, what)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "no such file"
        raise ConfigurationError(f"{key}={path}: {found}; expected {what}")
    return path


def _folder(value: Any, key: str, what: str) -> Path:
    path = _path(value, key, what)
    if not path.is_dir():
        found = "a file" if path.exists() else "no such folder"
        raise ConfigurationError(f"{key}={path}: {found}; expected {what}")
    return path


def _json_object(path: Path, key: str, lists: tuple[str, ...], what: str) -> dict[str, Any]:
    """A json file holding an object whose ``lists`` are lists (``what`` names the format)."""
    try:
        content = load_json(path)
    except DatasetError as error:
        raise ConfigurationError(f"{key}: {error}") from None
    missing = [
        k for k in lists if not isinstance(content, dict) or not isinstance(content.get(k), list)
    ]
    if missing:
        raise ConfigurationError(
            f"{key}={path}: not {what} (no {' and no '.join(repr(k) for k in missing)} list)"
        )
    return content


def _categories(content: Mapping[str, Any], key: str, path: Path) -> list[str]:
    """The category names, checked to be there and distinct (they are the prompts)."""
    names = [str(c.get("name", "")) if isinstance(c, dict) else "" for c in content["categories"]]
    if not names:
        raise ConfigurationError(f"{key}={path}: no categories; their names are the prompts")
    if "" in names:
        raise ConfigurationError(f"{key}={path}: a category without a name")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigurationError(
            f"{key}={path}: category names {repeated} repeat; the model is prompted with the "
            "names, so each must be distinct"
        )
    return names


def _check_files(folder: Path, names: list[Any], key: str, source: str) -> None:
    """Fails on the first held-out file that is not there (training files are checked by the
    reader; held-out ones must be too, before the first score)."""
    for name in names:
        if not isinstance(name, str) or not (folder / name).is_file():
            raise ConfigurationError(f"{key}={folder}: no file {name!r}, which {source} names")


def _has_mask(annotation: Any) -> bool:
    return isinstance(annotation, dict) and bool(annotation.get("segmentation"))


def _record(output_dir: Path, record: Mapping[str, Any], name: str = "split.json") -> Path:
    return write_text_atomic(output_dir / HELD_OUT_DIR / name, json.dumps(record, indent=1) + "\n")


class CocoFormat:
    """``finetune=coco``: a COCO instances json (``data.json``) and its images
    (``data.images``). Masks are trained and scored when every annotation has a segmentation
    (``data.masks`` null), else boxes only (masks are then learnt from boxes, as BoxInst)."""

    prompt_kind = "category"

    def __init__(self, data: DictConfig, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.json = _file(data.json, "data.json", "a COCO instances json")
        self.images = _folder(data.images, "data.images", "the folder of data.json's images")
        content = _json_object(
            self.json, "data.json", ("images", "annotations", "categories"), "a COCO json"
        )
        _categories(content, "data.json", self.json)
        if not content["annotations"]:
            raise ConfigurationError(f"data.json={self.json}: no annotations to train on")
        with_masks = sum(_has_mask(a) for a in content["annotations"])
        if data.masks is None:
            self.masks = with_masks == len(content["annotations"])
            if 0 < with_masks < len(content["annotations"]):
                logger.warning(
                    "data.json: %d of %d annotations have a segmentation; training boxes only "
                    "(data.masks=true needs one for every annotation)",
                    with_masks,
                    len(content["annotations"]),
                )
        else:
            self.masks = bool(data.masks)
        self.held_out: frozenset[str] = frozenset()
        if data.val_json is not None:
            self.val_json = _file(data.val_json, "data.val_json", "a COCO instances json")
            self.val_images = _folder(
                data.val_images or data.images, "data.val_images", "data.val_json's images"
            )
            self.val = _json_object(
                self.val_json, "data.val_json", ("images", "annotations", "categories"), "COCO"
            )
            _categories(self.val, "data.val_json", self.val_json)
            source = f"data.val_json={self.val_json}"
        else:
            ids = {str(image.get("id")): image.get("id") for image in content["images"]}
            where = f"data.json={self.json} (give data.val_json to score on other images)"
            self.held_out = held_out(ids, data.val_fraction, what="images", source=where)
            self.split = split_record(set(ids) - self.held_out, self.held_out, what="images")
            self.val = coco_subset(content, {ids[i] for i in self.held_out})
            self.val_images = self.images
            source = f"the held-out images of data.json (data.val_fraction={data.val_fraction})"
        names = [image.get("file_name") for image in self.val["images"]]
        _check_files(self.val_images, names, "data.val_images", source)
        scored = [a for a in self.val["annotations"] if not a.get("iscrowd")]
        if not scored:
            raise ConfigurationError(f"{source}: no annotated object to score")
        self.iou_type = "segm" if self.masks and all(map(_has_mask, scored)) else "bbox"
        self.metric = "mask_ap" if self.iou_type == "segm" else "box_ap"
        self.summary = (
            f"{len(content['images']) - len(self.held_out)} training images; scored on "
            f"{len(self.val['images'])} ({source}) by {self.metric}"
        )

    def dataset(self) -> DatasetSpec:
        from unipercept.data.datasets import CocoReader
        from unipercept.finetune.split import SubsetReader

        reader = functools.partial(
            CocoReader, annotations=self.json, images=self.images, masks=self.masks, name=NAME
        )
        if self.held_out:
            reader = functools.partial(
                SubsetReader, reader=reader, exclude=self.held_out, name=NAME
            )
        return DatasetSpec(NAME, reader, self.prompt_kind)

    def scorer(self, resolution: Resolution) -> Scorer:
        if self.held_out:
            _record(self.output_dir, self.split)
            # The held-out ground truth, for `python -m unipercept.evaluate --gt` later.
            _record(self.output_dir, self.val, "heldout.json")
        return CocoScore(self.val, self.val_images, iou_type=self.iou_type, resolution=resolution)


class RefcocoFormat:
    """``finetune=refcoco``: RefCOCO's refs pickle (``data.refs``), the instances json it
    names objects of (``data.json``) and the images (``data.images``); trains on the refs of
    ``data.split`` and scores those of ``data.val_split`` (or held-out images of the split)."""

    prompt_kind = "expression"
    metric = "P@0.5"

    def __init__(self, data: DictConfig, output_dir: Path) -> None:
        from unipercept.data.datasets import RefCocoReader

        self.output_dir = output_dir
        refs = _file(data.refs, "data.refs", "a RefCOCO refs pickle (refs(unc).p)")
        instances = _file(data.json, "data.json", "the instances json of data.refs")
        images = _folder(data.images, "data.images", "the folder of data.json's images")
        _categories(
            _json_object(instances, "data.json", ("images", "annotations", "categories"), "COCO"),
            "data.json",
            instances,
        )
        self.reader = functools.partial(
            RefCocoReader, refs=refs, instances=instances, images=images, name=NAME
        )
        try:
            entries = load_plain_pickle(refs)
            for split in (data.split, data.val_split):
                if split is not None:
                    self.reader(split=split)  # checks the split exists
        except (DatasetError, ValueError) as error:
            raise ConfigurationError(f"data.refs: {error}") from None
        self.split, self.val_split = data.split, data.val_split
        self.held_out: frozenset[str] = frozenset()
        if self.val_split is None:
            ids = {
                str(ref.get("image_id"))
                for ref in entries
                if isinstance(ref, dict) and data.split in (None, ref.get("split"))
            }
            where = f"data.refs={refs} split {data.split} (give data.val_split to score another)"
            self.held_out = held_out(ids, data.val_fraction, what="images", source=where)
            self.record = split_record(ids - self.held_out, self.held_out, what="images")
            source = f"held-out images of split {data.split} (data.val_fraction)"
        else:
            source = f"split {self.val_split}"
        self.summary = f"training on refs of split {data.split}; scored on {source} by P@0.5"

    def dataset(self) -> DatasetSpec:
        from unipercept.finetune.split import SubsetReader

        reader = functools.partial(self.reader, split=self.split)
        if self.held_out:
            reader = functools.partial(
                SubsetReader, reader=reader, exclude=self.held_out, name=NAME
            )
        return DatasetSpec(NAME, reader, self.prompt_kind)

    def scorer(self, resolution: Resolution) -> Scorer:
        if self.held_out:
            _record(self.output_dir, self.record)
            samples = [s for s in self.reader(split=self.split) if s.sample_id in self.held_out]
        else:
            samples = list(self.reader(split=self.val_split))
        if not any(sample.expressions for sample in samples):
            raise ConfigurationError("data.refs: no held-out expression to score")
        return ReferringScore(samples, resolution=resolution)


class YtvisFormat:
    """``finetune=ytvis``: a YouTube-VIS json (``data.json``) and its frames folder
    (``data.images``, the ``JPEGImages`` holding the videos' ``file_names``)."""

    prompt_kind = "category"
    metric = "vis_ap"

    def __init__(self, data: DictConfig, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.json = _file(data.json, "data.json", "a YouTube-VIS json")
        self.images = _folder(data.images, "data.images", "the folder of data.json's frames")
        lists = ("videos", "annotations", "categories")
        content = _json_object(self.json, "data.json", lists, "a YouTube-VIS json")
        _categories(content, "data.json", self.json)
        self.held_out: frozenset[str] = frozenset()
        if data.val_json is not None:
            self.val_json = _file(data.val_json, "data.val_json", "a YouTube-VIS json")
            self.val_images = _folder(
                data.val_images or data.images, "data.val_images", "data.val_json's frames"
            )
            self.val = _json_object(self.val_json, "data.val_json", lists, "a YouTube-VIS json")
            source = f"data.val_json={self.val_json}"
        else:
            ids = {str(video.get("id")): video.get("id") for video in content["videos"]}
            where = f"data.json={self.json} (give data.val_json to score other videos)"
            self.held_out = held_out(ids, data.val_fraction, what="videos", source=where)
            self.record = split_record(set(ids) - self.held_out, self.held_out, what="videos")
            self.val = ytvis_subset(content, {ids[i] for i in self.held_out})
            self.val_json = None
            self.val_images = self.images
            source = f"the held-out videos of data.json (data.val_fraction={data.val_fraction})"
        if not self.val["annotations"]:
            raise ConfigurationError(f"{source}: no annotated object to score")
        frames = [name for video in self.val["videos"] for name in video.get("file_names", [])]
        _check_files(self.val_images, frames, "data.val_images", source)
        self.summary = (
            f"{len(content['videos']) - len(self.held_out)} training videos; scored on "
            f"{len(self.val['videos'])} ({source}) by VIS AP"
        )

    def dataset(self) -> DatasetSpec:
        from unipercept.data.datasets import YouTubeVisReader
        from unipercept.finetune.split import SubsetReader

        reader = functools.partial(
            YouTubeVisReader, annotations=self.json, videos=self.images, name=NAME
        )
        if self.held_out:
            reader = functools.partial(
                SubsetReader, reader=reader, exclude=self.held_out, name=NAME
            )
        return DatasetSpec(NAME, reader, self.prompt_kind)

    def scorer(self, resolution: Resolution) -> Scorer:
        truth = self.val_json
        if truth is None:
            _record(self.output_dir, self.record)
            truth = _record(self.output_dir, self.val, "heldout.json")
        return VisScore(truth, self.val_images, resolution=resolution)


def _sequences(root: Path, key: str) -> list[str]:
    names = sorted(p.parent.name for p in root.glob("*/seqinfo.ini"))
    if not names:
        raise ConfigurationError(
            f"{key}={root}: no MOTChallenge sequence (<seq>/seqinfo.ini, img1/, gt/gt.txt)"
        )
    unannotated = [name for name in names if not (root / name / "gt" / "gt.txt").is_file()]
    if unannotated:
        raise ConfigurationError(
            f"{key}={root}: sequence {unannotated[0]} has no gt/gt.txt to train or score on"
        )
    return names


class MotFormat:
    """``finetune=mot``: a folder of MOTChallenge sequences (``data.root``), pedestrians
    (class 1) as MOT17 annotates them; prompted with their class name."""

    prompt_kind = "category"
    metric = "hota"

    def __init__(self, data: DictConfig, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.root = _folder(data.root, "data.root", "a folder of MOTChallenge sequences")
        names = _sequences(self.root, "data.root")
        if data.val_root is not None:
            self.val_root = _folder(data.val_root, "data.val_root", "MOTChallenge sequences")
            self.train = names
            self.val = {n: self.val_root / n for n in _sequences(self.val_root, "data.val_root")}
            source = f"data.val_root={self.val_root}"
        else:
            where = f"data.root={self.root} (give data.val_root to score other sequences)"
            out = held_out(names, data.val_fraction, what="sequences", source=where)
            self.train = [name for name in names if name not in out]
            self.val = {name: self.root / name for name in names if name in out}
            self.record = split_record(self.train, list(self.val), what="sequences")
            source = f"held-out sequences of data.root (data.val_fraction={data.val_fraction})"
        self.held_out = data.val_root is None
        self.summary = (
            f"{len(self.train)} training sequences; scored on {len(self.val)} ({source}) by HOTA"
        )

    def _reader(self):
        from unipercept.data.datasets import MotChallengeReader

        return functools.partial(
            MotChallengeReader, root=self.root, sequences=self.train, name=NAME
        )

    def dataset(self) -> DatasetSpec:
        return DatasetSpec(NAME, self._reader(), self.prompt_kind)

    def scorer(self, resolution: Resolution) -> Scorer:
        if self.held_out:
            _record(self.output_dir, self.record)
        return MotScore(self.val, self._reader()().categories, resolution=resolution)


FORMATS: dict[str, type] = {
    "coco": CocoFormat,
    "refcoco": RefcocoFormat,
    "ytvis": YtvisFormat,
    "mot": MotFormat,
}
