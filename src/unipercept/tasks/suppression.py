"""Duplicate removal after post-processing: box NMS, mask NMS or Matrix NMS, set by config."""

from __future__ import annotations

from typing import Literal

import torch

from unipercept.ops import batched_nms, mask_nms, matrix_nms, nms
from unipercept.structures import Instances, RLEMasks


def _dense_masks(instances: Instances) -> torch.Tensor:
    if instances.masks is None:
        raise ValueError(
            "mask-based suppression needs instances with masks (use a segmentation task, or BoxNMS)"
        )
    masks = instances.masks
    return masks.decode() if isinstance(masks, RLEMasks) else masks


class BoxNMS:
    """Greedy NMS over boxes within each label, or across labels.

    Args:
        iou_threshold: a box overlapping a better-scored kept one by more is dropped.
        across_labels: compare boxes whatever their labels, so that one object answered under
            two names (a query scoring high for both gives two identical boxes) is answered
            once, under its best name.
    """

    def __init__(self, *, iou_threshold: float = 0.7, across_labels: bool = False) -> None:
        self.iou_threshold = iou_threshold
        self.across_labels = across_labels

    def __call__(self, instances: Instances) -> Instances:
        if len(instances) == 0:
            return instances
        if self.across_labels:
            keep = nms(instances.boxes, instances.scores, self.iou_threshold)
        else:
            keep = batched_nms(
                instances.boxes, instances.scores, instances.labels, self.iou_threshold
            )
        return instances[keep]


class MaskNMS:
    """Greedy NMS over mask IoU within each label."""

    def __init__(self, *, iou_threshold: float = 0.5) -> None:
        self.iou_threshold = iou_threshold

    def __call__(self, instances: Instances) -> Instances:
        if len(instances) == 0:
            return instances
        keep = mask_nms(
            _dense_masks(instances),
            instances.scores,
            instances.labels,
            iou_threshold=self.iou_threshold,
        )
        return instances[keep]


class MatrixNMS:
    """SOLOv2's Matrix NMS: scores decay with the overlap of higher-scoring masks of the same
    label; instances whose decayed score falls below ``score_threshold`` are dropped."""

    def __init__(
        self,
        *,
        kernel: Literal["gaussian", "linear"] = "gaussian",
        sigma: float = 2.0,
        score_threshold: float = 0.05,
    ) -> None:
        self.kernel = kernel
        self.sigma = sigma
        self.score_threshold = score_threshold

    def __call__(self, instances: Instances) -> Instances:
        if len(instances) == 0:
            return instances
        scores = matrix_nms(
            _dense_masks(instances),
            instances.scores,
            instances.labels,
            kernel=self.kernel,
            sigma=self.sigma,
        )
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[scores[order] >= self.score_threshold]
        return instances.replace(scores=scores)[order]


Suppression = BoxNMS | MaskNMS | MatrixNMS
