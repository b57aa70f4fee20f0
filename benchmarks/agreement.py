"""How far two answers to the same input agree: the benchmarks' check that a faster setting
(bfloat16 autocast, another allocator, a batch) still gives the reference's detections.

Detections are matched one to one, the reference's in order of score: each takes the best
unmatched candidate of the same label whose box overlaps it at IoU >= ``min_iou`` (0.95: the
same box up to a pixel or two on a 50-pixel object). ``matched`` is the fraction of the
reference's detections that found one; ``max_score_drift`` the largest score difference over
the matched pairs; ``max_box_px`` their largest coordinate difference in pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from unipercept.structures.boxes import box_iou

MIN_IOU = 0.95


@dataclass(frozen=True)
class Agreement:
    count: int  # the reference's detections
    matched: float  # fraction of them with a match
    max_score_drift: float  # over matched pairs (0 when none)
    max_box_px: float  # over matched pairs (0 when none)
    mean_mask_iou: float | None = None  # over matched pairs, when both have masks

    def as_dict(self) -> dict:
        return asdict(self)


def match(
    reference_boxes: Tensor,
    reference_scores: Tensor,
    reference_labels: Tensor,
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    min_iou: float = MIN_IOU,
) -> list[tuple[int, int]]:
    """Pairs (reference index, candidate index), greedy in the reference's score order.

    Args:
        reference_boxes, boxes: (R, 4) and (C, 4) xyxy in pixels.
        reference_scores, scores: (R,) and (C,).
        reference_labels, labels: (R,) and (C,) int64.
    """
    if len(reference_boxes) == 0 or len(boxes) == 0:
        return []
    iou = box_iou(reference_boxes.double(), boxes.double())  # (R, C)
    iou = iou.masked_fill(reference_labels[:, None] != labels[None, :], 0.0)
    taken = torch.zeros(len(boxes), dtype=torch.bool)
    pairs = []
    for index in reference_scores.argsort(descending=True, stable=True).tolist():
        row = iou[index].masked_fill(taken, 0.0)
        best = int(row.argmax())
        if row[best] >= min_iou:
            taken[best] = True
            pairs.append((index, best))
    return pairs


def agreement(reference, candidate, *, min_iou: float = MIN_IOU) -> Agreement:
    """How well ``candidate``'s detections reproduce ``reference``'s (both
    :class:`~unipercept.structures.Instances`, or anything with boxes, scores, labels and
    optionally masks)."""
    return _agreement(reference, candidate, _pairs(reference, candidate, min_iou))


def _pairs(reference, candidate, min_iou: float) -> list[tuple[int, int]]:
    """:func:`match` on two sets of detections."""
    return match(
        reference.boxes.float(),
        reference.scores.float(),
        reference.labels,
        candidate.boxes.float(),
        candidate.scores.float(),
        candidate.labels,
        min_iou=min_iou,
    )


def _agreement(reference, candidate, pairs: list[tuple[int, int]]) -> Agreement:
    """:func:`agreement` given the matched (reference, candidate) index pairs."""
    count = len(reference.boxes)
    if not pairs:
        return Agreement(count, 0.0 if count else 1.0, 0.0, 0.0)
    first = torch.tensor([p[0] for p in pairs])
    second = torch.tensor([p[1] for p in pairs])
    drift = (reference.scores.float()[first] - candidate.scores.float()[second]).abs().max()
    box_px = (reference.boxes.float()[first] - candidate.boxes.float()[second]).abs().max()
    mask_iou = None
    reference_masks = getattr(reference, "masks", None)
    candidate_masks = getattr(candidate, "masks", None)
    if isinstance(reference_masks, Tensor) and isinstance(candidate_masks, Tensor):
        a = reference_masks[first].flatten(1).bool()
        b = candidate_masks[second].flatten(1).bool()
        union = (a | b).sum(1).clamp(min=1)
        mask_iou = float(((a & b).sum(1) / union).mean())
    return Agreement(count, len(pairs) / count, float(drift), float(box_px), mask_iou)


def combine(parts: list[Agreement]) -> Agreement:
    """One agreement over many images or frames: counts add up, maxima are maxima."""
    count = sum(p.count for p in parts)
    matched = sum(p.matched * p.count for p in parts)
    masks = [p.mean_mask_iou for p in parts if p.mean_mask_iou is not None]
    return Agreement(
        count,
        matched / count if count else 1.0,
        max((p.max_score_drift for p in parts), default=0.0),
        max((p.max_box_px for p in parts), default=0.0),
        sum(masks) / len(masks) if masks else None,
    )


def track_agreement(reference_frames, candidate_frames, *, min_iou: float = MIN_IOU):
    """Per-frame agreement of two tracking runs, and how consistently the candidate's track ids
    follow the reference's: the fraction of matched detections whose reference id maps to the
    candidate id it mapped to when first matched (1.0: the same tracks, up to renumbering).

    Returns:
        (combined Agreement, id consistency)
    """
    parts, first_seen, consistent, total = [], {}, 0, 0
    for reference, candidate in zip(reference_frames, candidate_frames, strict=True):
        pairs = _pairs(reference, candidate, min_iou)
        parts.append(_agreement(reference, candidate, pairs))
        for first, second in pairs:
            ours, theirs = int(reference.track_ids[first]), int(candidate.track_ids[second])
            consistent += first_seen.setdefault(ours, theirs) == theirs
            total += 1
    return combine(parts), consistent / total if total else 1.0
