"""Referring expression metrics (RefCOCO protocol): precision at IoU 0.5 for boxes (REC),
overall and mean IoU for masks (RES)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unipercept.structures import box_iou


@dataclass(frozen=True)
class ReferringBoxResult:
    """Attributes:
    precision: fraction of expressions whose top-1 box has IoU >= threshold with the truth.
    mean_iou: mean box IoU over expressions.
    count: number of expressions.
    """

    precision: float
    mean_iou: float
    count: int


def referring_box_precision(
    predicted: Sequence[Tensor], expected: Sequence[Tensor], threshold: float = 0.5
) -> ReferringBoxResult:
    """REC accuracy: one predicted and one true xyxy box per expression.

    Args:
        predicted: per expression, a (4,) or (1, 4) box.
        expected: per expression, the referred object's (4,) or (1, 4) box.
        threshold: IoU needed to count as correct (0.5 in the RefCOCO protocol).
    """
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} expressions")
    if not predicted:
        raise ValueError("no expressions to evaluate")
    ious = torch.stack(
        [
            box_iou(p.reshape(1, 4).double(), e.reshape(1, 4).double())[0, 0]
            for p, e in zip(predicted, expected, strict=True)
        ]
    )
    return ReferringBoxResult(
        precision=float((ious >= threshold).double().mean()),
        mean_iou=float(ious.mean()),
        count=len(predicted),
    )


@dataclass(frozen=True)
class ReferringMaskResult:
    """Attributes:
    overall_iou: total intersection over total union across all expressions (oIoU).
    mean_iou: mean of the per-expression IoUs (mIoU).
    count: number of expressions.
    """

    overall_iou: float
    mean_iou: float
    count: int


def referring_mask_iou(
    predicted: Sequence[Tensor], expected: Sequence[Tensor]
) -> ReferringMaskResult:
    """RES metrics: one predicted and one true (H, W) bool mask per expression (same sizes)."""
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} expressions")
    if not predicted:
        raise ValueError("no expressions to evaluate")
    intersections, unions = [], []
    for index, (p, e) in enumerate(zip(predicted, expected, strict=True)):
        if p.shape != e.shape:
            raise ValueError(
                f"expression {index}: predicted mask {tuple(p.shape)} and true mask "
                f"{tuple(e.shape)} differ in size"
            )
        intersections.append(float((p.bool() & e.bool()).sum()))
        unions.append(float((p.bool() | e.bool()).sum()))
    inter, union = torch.tensor(intersections), torch.tensor(unions)
    per_expression = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    return ReferringMaskResult(
        overall_iou=float(inter.sum() / union.sum().clamp(min=1)),
        mean_iou=float(per_expression.mean()),
        count=len(predicted),
    )
