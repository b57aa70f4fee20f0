"""Greedy non-maximum suppression over boxes, plain and per category.

Written here because torchvision (which has the usual compiled op) does not import with the
CPU torch this project installs. The semantics are torchvision's: a box is dropped when its IoU
with an already kept, higher-scoring box is strictly greater than the threshold; the kept
indices come back sorted by decreasing score.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from unipercept.structures.boxes import _check_boxes


def _check_nms_inputs(boxes: Tensor, scores: Tensor, iou_threshold: float) -> None:
    _check_boxes(boxes)
    if boxes.ndim != 2:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    if not isinstance(scores, Tensor) or scores.shape != (boxes.shape[0],):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) like boxes, got {shape}")
    if not (bool(torch.isfinite(boxes).all()) and bool(torch.isfinite(scores).all())):
        raise ValueError("boxes and scores must be finite (no NaN or inf)")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: (N, 4) xyxy boxes.
        scores: (N,) scores; ties keep the lower index first.
        iou_threshold: boxes overlapping a kept box by IoU > this are dropped.

    Returns:
        (K,) int64 indices into ``boxes`` of the kept boxes, by decreasing score, on the boxes'
        device.
    """
    _check_nms_inputs(boxes, scores, iou_threshold)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    # The greedy loop runs once per kept box over the still-alive boxes, vectorised in numpy:
    # O(kept * N) work and O(N) memory, instead of an N x N IoU matrix.
    sorted_boxes = boxes[order].detach().cpu().numpy()  # (N, 4) in score order
    x1, y1, x2, y2 = sorted_boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    alive = np.arange(sorted_boxes.shape[0])
    kept = []
    while alive.size:
        best, rest = alive[0], alive[1:]
        kept.append(best)
        inter_w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        inter_h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, inter / union, 0.0)
        alive = rest[iou <= iou_threshold]
    kept_positions = torch.as_tensor(np.asarray(kept, dtype=np.int64), device=boxes.device)
    return order[kept_positions]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression within each category: boxes of different labels never suppress
    each other.

    Args:
        boxes: (N, 4) xyxy boxes.
        scores: (N,) scores.
        labels: (N,) integer category of each box.
        iou_threshold: see :func:`nms`.

    Returns:
        (K,) int64 indices of the kept boxes, by decreasing score.
    """
    _check_nms_inputs(boxes, scores, iou_threshold)
    if not isinstance(labels, Tensor) or labels.shape != scores.shape:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape ({boxes.shape[0]},) like boxes, got {shape}")
    if labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    # Moving each category into its own disjoint region of the plane makes one NMS pass do the
    # work of one pass per category.
    span = (boxes.max() - boxes.min() + 1).to(boxes.dtype)
    offsets = (labels - labels.min()).to(boxes.dtype) * span  # (N,)
    return nms(boxes + offsets[:, None], scores, iou_threshold)
