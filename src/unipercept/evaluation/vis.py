"""Video instance segmentation: YouTube-VIS AP, as the YouTube-VIS fork of the COCO API
(``youtubevos/cocoapi``, ``ytvoseval.py``) computes it.

Matching, precision interpolation and averaging are pycocotools' :class:`COCOeval`, with one
"image" per video and one "annotation" per video instance; only the IoU differs. Between a
predicted and a true instance it is spatio-temporal: the sum over frames of the intersection
divided by the sum over frames of the union, where a frame in which only one side has a mask
adds that mask's area to the union (0 when the union is empty). Crowd instances are ignored in
matching, as in COCO; an instance's area is the mean of its non-empty per-frame areas.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from unipercept.data.io import write_text_atomic
from unipercept.structures.masks import RLE, _check_rles, polygons_to_rle

FrameMasks = tuple[RLE | None, ...]


@dataclass(frozen=True)
class VisVideo:
    """Attributes: id, frame ``height`` and ``width`` in pixels, ``length`` in frames."""

    id: int
    height: int
    width: int
    length: int


@dataclass(frozen=True)
class VisInstance:
    """A true video instance.

    Attributes:
        video_id: the video it belongs to.
        category_id: its category.
        segmentations: per frame, a compressed RLE (``str`` counts) or None where absent.
        iscrowd: crowd instances are ignored in matching.
    """

    video_id: int
    category_id: int
    segmentations: FrameMasks
    iscrowd: bool = False


@dataclass(frozen=True)
class VisPrediction:
    """A predicted video instance, one entry of a YouTube-VIS results json.

    Attributes:
        video_id, category_id: as in :class:`VisInstance`.
        score: confidence used to rank predictions.
        segmentations: per frame, a compressed RLE or None where the instance is absent.
    """

    video_id: int
    category_id: int
    score: float
    segmentations: FrameMasks


@dataclass(frozen=True)
class VisGroundTruth:
    """A YouTube-VIS annotation file.

    Attributes:
        videos: the annotated videos.
        instances: the true video instances.
        category_ids: all category ids (also those without instances).
        source: where it was read from, for error messages.
    """

    videos: tuple[VisVideo, ...]
    instances: tuple[VisInstance, ...]
    category_ids: tuple[int, ...]
    source: str = "<ground truth>"


@dataclass(frozen=True)
class VisResult:
    """YouTube-VIS scores (fractions; -1 where COCO has nothing to average).

    Attributes:
        ap: AP averaged over IoU 0.50:0.05:0.95, all areas, 100 detections per video.
        ap50, ap75: AP at IoU 0.5 and 0.75.
        ar1, ar10: recall with at most 1 and 10 detections per video and category.
    """

    ap: float
    ap50: float
    ap75: float
    ar1: float
    ar10: float


def spatiotemporal_iou(predicted: FrameMasks, true: FrameMasks) -> float:
    """Spatio-temporal mask IoU of two instances over the same frames (compressed RLEs or None):
    sum of per-frame intersections over sum of per-frame unions; 0 if the union is empty."""
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predicted frames for {len(true)} true frames")
    intersection = union = 0.0
    for p, t in zip(predicted, true, strict=True):
        if p and t:
            intersection += float(mask_utils.area(mask_utils.merge([p, t], intersect=True)))
            union += float(mask_utils.area(mask_utils.merge([p, t], intersect=False)))
        elif p or t:
            union += float(mask_utils.area(p or t))
    return intersection / union if union > 0 else 0.0


def _frame_masks(
    segmentations: object, video: VisVideo, where: str, *, allow_polygons: bool
) -> FrameMasks:
    if not isinstance(segmentations, list):
        raise ValueError(f"{where}: 'segmentations' must be a list, got {type(segmentations)}")
    if len(segmentations) != video.length:
        raise ValueError(
            f"{where}: {len(segmentations)} frames for video {video.id} of length {video.length}"
        )
    size = [video.height, video.width]
    masks: list[RLE | None] = []
    for frame, segmentation in enumerate(segmentations):
        if segmentation is None:
            masks.append(None)
        elif isinstance(segmentation, list) and allow_polygons:
            masks.append(polygons_to_rle(segmentation, (video.height, video.width)))
        elif isinstance(segmentation, dict):
            try:
                (rle,) = _check_rles([segmentation])
            except (ValueError, TypeError) as error:
                raise ValueError(f"{where}: frame {frame}: {error}") from None
            if list(rle["size"]) != size:
                raise ValueError(
                    f"{where}: frame {frame}: mask size {rle['size']} but video {video.id} "
                    f"is {size}"
                )
            masks.append(rle)
        else:
            raise ValueError(f"{where}: frame {frame}: not an RLE dict: {segmentation!r}")
    return tuple(masks)


def _read_json(path: str | os.PathLike) -> object:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid json: {error}") from None


def load_vis_ground_truth(path: str | os.PathLike) -> VisGroundTruth:
    """Reads a YouTube-VIS annotation json (``videos``, ``annotations``, ``categories``); per-frame
    segmentations may be polygons, compressed or uncompressed RLE, or null."""
    data = _read_json(path)
    if not isinstance(data, dict) or not {"videos", "annotations", "categories"} <= set(data):
        raise ValueError(f"{path}: needs 'videos', 'annotations' and 'categories'")
    videos = {}
    for index, entry in enumerate(data["videos"]):
        try:
            video = VisVideo(
                id=int(entry["id"]),
                height=int(entry["height"]),
                width=int(entry["width"]),
                length=int(entry.get("length", len(entry.get("file_names", [])))),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: videos[{index}]: bad entry ({error!r})") from None
        videos[video.id] = video
    instances = []
    for index, entry in enumerate(data["annotations"]):
        where = f"{path}: annotations[{index}]"
        video = videos.get(entry.get("video_id"))
        if video is None:
            raise ValueError(f"{where}: unknown video_id {entry.get('video_id')!r}")
        masks = _frame_masks(entry.get("segmentations"), video, where, allow_polygons=True)
        instances.append(
            VisInstance(
                video_id=video.id,
                category_id=int(entry["category_id"]),
                segmentations=masks,
                iscrowd=bool(entry.get("iscrowd", 0)),
            )
        )
    return VisGroundTruth(
        videos=tuple(videos.values()),
        instances=tuple(instances),
        category_ids=tuple(int(c["id"]) for c in data["categories"]),
        source=str(path),
    )


def write_vis_results(path: str | os.PathLike, predictions: Sequence[VisPrediction]) -> None:
    """Writes predictions as a YouTube-VIS results json list, atomically."""
    entries = [
        {
            "video_id": int(p.video_id),
            "category_id": int(p.category_id),
            "score": float(p.score),
            "segmentations": [None if s is None else dict(s) for s in p.segmentations],
        }
        for p in predictions
    ]
    write_text_atomic(Path(path), json.dumps(entries))


def read_vis_results(path: str | os.PathLike) -> list[VisPrediction]:
    """Reads a YouTube-VIS results json: a list of ``{"video_id", "category_id", "score",
    "segmentations"}`` with one compressed RLE or null per frame. Sizes and frame counts are
    checked against the ground truth by :func:`evaluate_vis`."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: a results file is a json list")
    predictions = []
    for index, entry in enumerate(data):
        where = f"{path}: entry {index}"
        try:
            prediction = VisPrediction(
                video_id=int(entry["video_id"]),
                category_id=int(entry["category_id"]),
                score=float(entry["score"]),
                segmentations=tuple(entry["segmentations"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where}: bad entry ({error!r})") from None
        predictions.append(prediction)
    return predictions


class _SpatioTemporalEval(COCOeval):
    """COCOeval whose IoU is the spatio-temporal one of ``ytvoseval.YTVOSeval.computeIoU``."""

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:
        p = self.params
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if not gt and not dt:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        ious = np.zeros((len(dt), len(gt)))  # (num_detections, num_truths)
        for i, j in np.ndindex(ious.shape):
            ious[i, j] = spatiotemporal_iou(dt[i]["segmentations"], gt[j]["segmentations"])
        return ious


def _mean_area(masks: FrameMasks) -> float:
    areas = [float(mask_utils.area(m)) for m in masks if m]
    areas = [a for a in areas if a]  # ytvos averages the truthy per-frame areas
    return float(np.mean(areas)) if areas else 0.0


def _coco(videos: Sequence[VisVideo], categories: Sequence[int], annotations: list) -> COCO:
    coco = COCO()
    coco.dataset = {
        "images": [{"id": v.id, "height": v.height, "width": v.width} for v in videos],
        "categories": [{"id": c} for c in categories],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def evaluate_vis(
    gt: VisGroundTruth | str | os.PathLike,
    predictions: Sequence[VisPrediction] | str | os.PathLike,
) -> VisResult:
    """YouTube-VIS AP / AR of predicted video instances.

    Args:
        gt: the ground truth, or the path of a YouTube-VIS annotation json.
        predictions: predicted instances, or the path of a results json. Each must name a
            ground-truth video and category, have a finite score and one mask (or None) per
            frame of the video's size.

    Returns:
        :class:`VisResult`.
    """
    if not isinstance(gt, VisGroundTruth):
        gt = load_vis_ground_truth(gt)
    source = "<predictions>"
    if isinstance(predictions, str | os.PathLike):
        source = str(predictions)
        predictions = read_vis_results(predictions)
    videos = {v.id: v for v in gt.videos}
    categories = set(gt.category_ids)

    true_annotations = []
    for index, instance in enumerate(gt.instances):
        true_annotations.append(
            {
                "id": index + 1,
                "image_id": instance.video_id,
                "category_id": instance.category_id,
                "segmentations": instance.segmentations,
                "area": _mean_area(instance.segmentations),
                "iscrowd": int(instance.iscrowd),
            }
        )
    detections = []
    for index, prediction in enumerate(predictions):
        where = f"{source}: entry {index}"
        video = videos.get(prediction.video_id)
        if video is None:
            raise ValueError(f"{where}: unknown video_id {prediction.video_id}")
        if prediction.category_id not in categories:
            raise ValueError(f"{where}: unknown category_id {prediction.category_id}")
        if not math.isfinite(prediction.score):
            raise ValueError(f"{where}: score {prediction.score} is not finite")
        masks = _frame_masks(list(prediction.segmentations), video, where, allow_polygons=False)
        detections.append(
            {
                "id": index + 1,
                "image_id": video.id,
                "category_id": prediction.category_id,
                "segmentations": masks,
                "area": _mean_area(masks),
                "iscrowd": 0,
                "score": float(prediction.score),
            }
        )

    coco_gt = _coco(gt.videos, gt.category_ids, true_annotations)
    coco_dt = _coco(gt.videos, gt.category_ids, detections)
    # iouType "bbox" keeps _prepare from rasterising a 'segmentation' field; computeIoU is ours.
    evaluator = _SpatioTemporalEval(coco_gt, coco_dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats  # COCO order: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ...
    return VisResult(
        ap=float(stats[0]),
        ap50=float(stats[1]),
        ap75=float(stats[2]),
        ar1=float(stats[6]),
        ar10=float(stats[7]),
    )
