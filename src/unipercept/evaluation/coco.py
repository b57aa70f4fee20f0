"""COCO box and mask AP (detection, instance segmentation) through pycocotools' ``COCOeval``,
and the COCO results json that carries predictions to it.

A COCO result is one predicted object::

    {"image_id": int, "category_id": int, "score": float,
     "bbox": [x, y, w, h],                              # pixels; for iou_type "bbox"
     "segmentation": {"size": [h, w], "counts": str}}   # compressed RLE; for iou_type "segm"

Results are checked against the ground truth before anything is evaluated or written: an
image or category the ground truth lacks, a mask of another size than its image, or a score
that is not finite raises ``ValueError`` naming the file and the entry.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pycocotools.mask as mask_utils
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unipercept.data.io import write_text_atomic
from unipercept.structures import Instances, RLEMasks, rle_encode

IouType = Literal["bbox", "segm"]
IOU_TYPES = ("bbox", "segm")


@dataclass(frozen=True)
class CocoResult:
    """The 12 numbers of ``COCOeval.summarize()``, in its order.

    AP is averaged over IoU 0.50:0.05:0.95 unless named otherwise; AR is the recall with at
    most 1, 10 or 100 detections per image. Small, medium and large objects have areas below
    32², between 32² and 96², and above 96² pixels. A number is -1 where the ground truth has
    no object to measure it on (e.g. no large objects).

    Attributes:
        ap, ap50, ap75: AP at IoU 0.50:0.95, 0.50 and 0.75 (100 detections per image).
        ap_small, ap_medium, ap_large: AP at 0.50:0.95 by object area.
        ar1, ar10, ar100: AR at 0.50:0.95 with 1, 10 and 100 detections per image.
        ar_small, ar_medium, ar_large: AR at 0.50:0.95 (100 detections) by object area.
        iou_type: ``"bbox"`` or ``"segm"``.
    """

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    ar1: float
    ar10: float
    ar100: float
    ar_small: float
    ar_medium: float
    ar_large: float
    iou_type: IouType

    @property
    def stats(self) -> tuple[float, ...]:
        """The 12 numbers in ``COCOeval.stats`` order."""
        return astuple(self)[:12]


def _load_ground_truth(ground_truth: str | os.PathLike | COCO) -> tuple[COCO, str]:
    """The ground truth and the name its errors quote."""
    if isinstance(ground_truth, COCO):
        return ground_truth, "the ground-truth COCO object"
    path = Path(ground_truth)
    if not path.is_file():
        raise ValueError(f"ground-truth file {path} does not exist")
    try:
        # COCO() prints progress; keep it quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"ground-truth file {path} is not COCO json: {error}") from error
    return coco, f"ground-truth file {path}"


def _load_results(
    results: str | os.PathLike | Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], str]:
    """The result dicts and the name their errors quote."""
    if isinstance(results, str | os.PathLike):
        path = Path(results)
        if not path.is_file():
            raise ValueError(f"results file {path} does not exist")
        try:
            loaded = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"results file {path} is not json: {error}") from error
        if not isinstance(loaded, list):
            raise ValueError(f"results file {path} must hold a list, got {type(loaded).__name__}")
        return loaded, f"results file {path}"
    return list(results), "results"


def _finite_numbers(value: Any, count: int) -> bool:
    return (
        isinstance(value, Sequence | np.ndarray)
        and len(value) == count
        and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
    )


def check_coco_results(
    results: Sequence[dict[str, Any]],
    ground_truth: COCO | None = None,
    *,
    iou_type: IouType | None = None,
    source: str = "results",
) -> None:
    """Raises ``ValueError`` naming ``source`` and the first bad entry (index, image_id).

    Without ``ground_truth`` only the entries' form is checked (ids are ints, the score and
    box are finite, a segmentation is an RLE dict); with it, also that the image and category
    exist and that a mask has its image's size.

    Args:
        results: COCO result dicts.
        ground_truth: the COCO ground truth the results are for.
        iou_type: ``"bbox"`` requires a ``bbox`` in every entry, ``"segm"`` a ``segmentation``.
        source: what the results are called in errors, e.g. their file.
    """
    for index, result in enumerate(results):
        image_id = result.get("image_id", "?") if isinstance(result, dict) else "?"
        where = f"{source}: result {index} (image_id {image_id})"
        if not isinstance(result, dict):
            raise ValueError(f"{where} must be a dict, got {type(result).__name__}")
        for key in ("image_id", "category_id", "score"):
            if key not in result:
                raise ValueError(f"{where} has no {key!r}")
        for key in ("image_id", "category_id"):
            if not isinstance(result[key], numbers.Integral) or isinstance(result[key], bool):
                raise ValueError(f"{where}: {key} must be an int, got {result[key]!r}")
        if not _finite_numbers([result["score"]], 1):
            raise ValueError(f"{where}: score must be a finite number, got {result['score']!r}")
        required = {"bbox": "bbox", "segm": "segmentation"}.get(iou_type or "")
        if required is not None and required not in result:
            raise ValueError(f"{where} has no {required!r}, needed for iou_type {iou_type!r}")
        if "bbox" in result:
            box = result["bbox"]
            if not _finite_numbers(box, 4) or box[2] < 0 or box[3] < 0:
                raise ValueError(f"{where}: bbox must be 4 finite [x, y, w >= 0, h >= 0]: {box!r}")
        segmentation = result.get("segmentation")
        if segmentation is not None and not (
            isinstance(segmentation, dict) and "size" in segmentation and "counts" in segmentation
        ):
            raise ValueError(f"{where}: segmentation must be an RLE dict with size and counts")
        if ground_truth is None:
            continue
        if image_id not in ground_truth.imgs:
            raise ValueError(f"{where}: image_id {image_id} is not in the ground truth")
        category_id = result["category_id"]
        if category_id not in ground_truth.cats:
            raise ValueError(f"{where}: category_id {category_id} is not in the ground truth")
        image = ground_truth.imgs[image_id]
        if segmentation is not None and "height" in image and "width" in image:
            mask_size = tuple(int(s) for s in segmentation["size"])
            image_size = (int(image["height"]), int(image["width"]))
            if mask_size != image_size:
                raise ValueError(
                    f"{where}: mask size {mask_size} differs from the image's (height, width) "
                    f"{image_size} in the ground truth"
                )


def _results_coco(ground_truth: COCO, results: list[dict[str, Any]], iou_type: IouType) -> COCO:
    """``ground_truth.loadRes(results)`` without its prints, without mutating ``results``, and
    also for an empty list (where loadRes fails).

    For mask AP the entries' boxes are replaced by the masks' own: loadRes takes a detection's
    area from its box when it has one, which would sort masks into small/medium/large by box
    area (detectron2's COCOEvaluator drops the box for the same reason).
    """
    annotations = []
    for index, result in enumerate(results):
        annotation = dict(result)
        if iou_type == "segm":
            segmentation = annotation["segmentation"]
            if isinstance(segmentation["counts"], list):
                # Uncompressed RLE: the form mask_utils.area and toBbox read is compressed.
                segmentation = mask_utils.frPyObjects(segmentation, *segmentation["size"])
            annotation["segmentation"] = segmentation
            annotation["area"] = float(mask_utils.area(segmentation))
            annotation["bbox"] = mask_utils.toBbox(segmentation).tolist()
        else:
            x, y, w, h = annotation["bbox"]
            annotation.setdefault("segmentation", [[x, y, x, y + h, x + w, y + h, x + w, y]])
            annotation["area"] = w * h
        annotation["id"] = index + 1
        annotation["iscrowd"] = 0
        annotations.append(annotation)
    detections = COCO()
    detections.dataset = {
        "info": copy.deepcopy(ground_truth.dataset.get("info", {})),
        "images": list(ground_truth.dataset["images"]),
        "categories": copy.deepcopy(ground_truth.dataset["categories"]),
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        detections.createIndex()
    return detections


def evaluate_coco(
    ground_truth: str | os.PathLike | COCO,
    results: str | os.PathLike | Sequence[dict[str, Any]],
    iou_type: IouType = "bbox",
    *,
    verbose: bool = False,
) -> CocoResult:
    """COCO AP/AR of results against a ground truth, as pycocotools' ``COCOeval`` computes it.

    Args:
        ground_truth: a COCO instances json file, or a loaded ``COCO``.
        results: a COCO results json file, or the result dicts (see :func:`coco_results`).
            Images without results count as having no detections.
        iou_type: ``"bbox"`` for box AP (detection), ``"segm"`` for mask AP (instance
            segmentation).
        verbose: let pycocotools print its progress and summary table.

    Returns:
        The 12 summary numbers.

    Raises:
        ValueError: a file is missing or unreadable, or a result names an image or category
            that the ground truth lacks, has a mask of another size than its image, or a
            score that is not finite; the message names the file and the entry.
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    coco, gt_name = _load_ground_truth(ground_truth)
    entries, source = _load_results(results)
    check_coco_results(entries, coco, iou_type=iou_type, source=f"{source} ({gt_name})")
    detections = _results_coco(coco, entries, iou_type)
    output = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with output:
        evaluator = COCOeval(coco, detections, iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return CocoResult(*(float(s) for s in evaluator.stats), iou_type=iou_type)


def coco_results(
    image_id: int, instances: Instances, category_ids: Sequence[int]
) -> list[dict[str, Any]]:
    """Converts one image's predictions to COCO result dicts.

    Args:
        image_id: the image's id in the ground truth.
        instances: N predictions with ``scores``, ``labels`` and ``boxes`` and/or ``masks``;
            boxes are xyxy pixels, masks (N, H, W) bool or :class:`RLEMasks`.
        category_ids: the COCO category id of each label index (``labels`` index into it).

    Returns:
        N dicts with ``image_id``, ``category_id``, ``score``, ``bbox`` (xywh, when
        ``instances`` has boxes) and ``segmentation`` (compressed RLE with str counts, when it
        has masks).
    """
    where = f"instances of image_id {image_id}"
    if instances.scores is None or instances.labels is None:
        raise ValueError(f"{where} need scores and labels")
    if instances.boxes is None and instances.masks is None:
        raise ValueError(f"{where} need boxes or masks")
    scores = instances.scores.detach().cpu().double()  # (N,)
    labels = instances.labels.detach().cpu()  # (N,)
    not_finite = torch.nonzero(~torch.isfinite(scores)).flatten().tolist()
    if not_finite:
        index = not_finite[0]
        raise ValueError(f"{where}: instance {index} has score {scores[index].item()}")
    outside = torch.nonzero((labels < 0) | (labels >= len(category_ids))).flatten().tolist()
    if outside:
        index = outside[0]
        raise ValueError(
            f"{where}: instance {index} has label {labels[index].item()}, "
            f"outside the {len(category_ids)} category_ids"
        )
    results = [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[label]),
            "score": score,
        }
        for label, score in zip(labels.tolist(), scores.tolist(), strict=True)
    ]
    if instances.boxes is not None:
        boxes = instances.boxes.detach().cpu().double()  # (N, 4) xyxy
        xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1)  # (N, 4) xywh
        for result, box in zip(results, xywh.tolist(), strict=True):
            result["bbox"] = box
    if instances.masks is not None:
        masks = instances.masks
        rles = masks.rles if isinstance(masks, RLEMasks) else rle_encode(masks)
        for result, rle in zip(results, rles, strict=True):
            result["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"]}
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not json serialisable")


def write_coco_results(
    path: str | os.PathLike,
    results: Sequence[dict[str, Any]],
    ground_truth: str | os.PathLike | COCO | None = None,
) -> Path:
    """Writes COCO result dicts as json, atomically: the file appears whole or not at all.

    Args:
        path: the json file to write (replaced if it exists).
        results: COCO result dicts (see :func:`coco_results`).
        ground_truth: when given, the results are checked against it (see
            :func:`evaluate_coco`) before anything is written.

    Returns:
        ``path``.

    Raises:
        ValueError: a result is malformed or does not fit ``ground_truth``; nothing is written.
    """
    path = Path(path)
    coco = None
    source = f"results for {path}"
    if ground_truth is not None:
        coco, gt_name = _load_ground_truth(ground_truth)
        source = f"{source} ({gt_name})"
    results = list(results)
    check_coco_results(results, coco, source=source)
    text = json.dumps(results, allow_nan=False, default=_json_default)
    return write_text_atomic(path, text)


__all__ = [
    "IOU_TYPES",
    "CocoResult",
    "IouType",
    "check_coco_results",
    "coco_results",
    "evaluate_coco",
    "write_coco_results",
]
