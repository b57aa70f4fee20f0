"""UNINEXT's label assignment (``HungarianMatcherVL`` of ``models/deformable_detr/matcher.py``):
SimOTA's dynamic-k matching for the decoder layers (``MODEL.OTA``: a dynamic number of queries
per object, each query one object), the Hungarian matcher for the encoder's proposals, and the
focal class cost averaged over an object's positive tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from unipercept.structures import box_convert, box_iou, generalized_box_iou

# SimOTA's centre prior: a query's centre within 2.5 strides of 32 (in normalised units) of the
# object's centre (get_in_boxes_info).
CENTRE_RADIUS = 2.5 / 32

Match = tuple[Tensor, Tensor]


def class_cost(probability: Tensor, positive: Tensor, alpha: float, gamma: float) -> Tensor:
    """(Q, T) focal matching cost of each query for each object: the cost of predicting the
    object's tokens minus that of not predicting them, averaged over its positive tokens.

    Args:
        probability: (Q, L) sigmoid of the token logits.
        positive: (T, L) bool, each object's tokens.
    """
    negative = (1 - alpha) * probability**gamma * -(1 - probability + 1e-8).log()
    positive_cost = alpha * (1 - probability) ** gamma * -(probability + 1e-8).log()
    weights = positive.float()
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1)  # (T, L), rows mean
    return (positive_cost - negative) @ weights.T


def _centre_prior(boxes: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """SimOTA's candidates: ``(Q,)`` queries whose centre is inside some object's box or near
    some object's centre, and ``(Q, T)`` those inside *and* near each object."""
    x, y = boxes[:, 0:1], boxes[:, 1:2]  # (Q, 1)
    corners = box_convert(targets, "cxcywh", "xyxy")  # (T, 4)
    inside = (x > corners[:, 0]) & (x < corners[:, 2]) & (y > corners[:, 1]) & (y < corners[:, 3])
    cx, cy = targets[:, 0], targets[:, 1]
    near = (
        (x > cx - CENTRE_RADIUS)
        & (x < cx + CENTRE_RADIUS)
        & (y > cy - CENTRE_RADIUS)
        & (y < cy + CENTRE_RADIUS)
    )
    return inside.any(1) | near.any(1), inside & near


def _resolve_conflicts(matching: Tensor, cost: Tensor) -> None:
    """A query picked by several objects keeps only its cheapest (in place)."""
    shared = matching.sum(1) > 1
    if bool(shared.any()):
        cheapest = cost[shared].argmin(1)
        matching[shared] = 0
        matching[shared.nonzero()[:, 0], cheapest] = 1


def simota_matching(
    probability: Tensor,
    boxes: Tensor,
    positive: Tensor,
    target_boxes: Tensor,
    *,
    candidates: int = 10,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> tuple[Tensor, Tensor]:
    """SimOTA's dynamic-k assignment for one image (``forward_ota``, ``dynamic_k_matching``).

    Each object takes its ``k`` cheapest queries, ``k`` the sum of its ``candidates`` best IoUs
    (at least 1); cost = class + 3 * (-GIoU) + 100 outside the centre prior, +10000 for queries
    that are no object's candidate. A query claimed twice keeps its cheapest object; objects
    left without a query take their cheapest free one until each has one. (UNINEXT resolves
    the queries claimed twice in that last loop by the first round's list; here by the
    current one, so that no query ends with two objects.)

    Args:
        probability: (Q, L) sigmoid of the token logits.
        boxes: (Q, 4) normalised cxcywh boxes.
        positive: (T, L) bool, each object's tokens (T >= 1).
        target_boxes: (T, 4) normalised cxcywh boxes.
        candidates: how many best IoUs make ``k`` (10; the re-id loss's negatives use 100).

    Returns:
        ``(matching, cost)``: (Q, T) 1.0 where a query is assigned to an object, and the
        (Q, T) cost it was decided on (as finally raised for taken queries), on the CPU.
    """
    candidate, prior = _centre_prior(boxes, target_boxes)
    predicted = box_convert(boxes, "cxcywh", "xyxy")
    wanted = box_convert(target_boxes, "cxcywh", "xyxy")
    ious = box_iou(predicted, wanted)  # (Q, T)
    cost = (
        class_cost(probability, positive, alpha, gamma)
        - 3.0 * generalized_box_iou(predicted, wanted)
        + 100.0 * (~prior).float()
    )
    cost[~candidate] += 10000.0
    cost = torch.nan_to_num(cost.float(), nan=1e8, posinf=1e8).cpu()
    ious = ious.float().cpu()
    matching = torch.zeros_like(cost)
    dynamic_k = ious.topk(min(len(ious), candidates), dim=0).values.sum(0).int().clamp(min=1)
    for target in range(len(target_boxes)):
        chosen = cost[:, target].topk(int(dynamic_k[target]), largest=False).indices
        matching[chosen, target] = 1.0
    _resolve_conflicts(matching, cost)
    while bool((matching.sum(0) == 0).any()):
        cost[matching.sum(1) > 0] += 100000.0  # taken queries last
        for target in (matching.sum(0) == 0).nonzero()[:, 0].tolist():
            matching[cost[:, target].argmin(), target] = 1.0
        _resolve_conflicts(matching, cost)
    return matching, cost


def best_queries(matching: Tensor, cost: Tensor) -> Tensor:
    """(T,) each object's cheapest assigned query (``matched_query_id``: the query whose re-id
    embedding stands for the object)."""
    return cost.masked_fill(matching == 0, float("inf")).argmin(0)


def simota_assign(
    probability: Tensor,
    boxes: Tensor,
    positive: Tensor,
    target_boxes: Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`simota_matching` as ``(query_index, target_index, best)``: int64 on the CPU,
    queries ascending, every object with at least one query; ``best`` (T,) each object's
    cheapest query (:func:`best_queries`)."""
    if len(target_boxes) == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, empty
    matching, cost = simota_matching(
        probability, boxes, positive, target_boxes, alpha=alpha, gamma=gamma
    )
    queries = (matching.sum(1) > 0).nonzero()[:, 0]
    return queries, matching[queries].argmax(1), best_queries(matching, cost)


def hungarian_match(
    logits: Tensor,
    boxes: Tensor,
    positive: Sequence[Tensor],
    target_boxes: Sequence[Tensor],
    *,
    cost_class: float = 2.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> list[Match]:
    """One-to-one matching of a batch (``HungarianMatcherVL.forward``).

    Args:
        logits: (B, Q, L) token logits; boxes: (B, Q, 4) normalised cxcywh.
        positive: per image, (T_b, L) bool; target_boxes: per image, (T_b, 4).
    """
    matches = []
    for image in range(logits.shape[0]):
        if len(target_boxes[image]) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            matches.append((empty, empty))
            continue
        predicted = box_convert(boxes[image], "cxcywh", "xyxy")
        wanted = box_convert(target_boxes[image], "cxcywh", "xyxy")
        cost = (
            cost_class * class_cost(logits[image].sigmoid(), positive[image], alpha, gamma)
            + cost_bbox * torch.cdist(boxes[image], target_boxes[image], p=1)
            - cost_giou * generalized_box_iou(predicted, wanted)
        )
        cost = torch.nan_to_num(cost.float(), nan=1e8, posinf=1e8, neginf=-1e8).cpu()
        rows, cols = linear_sum_assignment(cost.numpy())
        matches.append(
            (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
        )
    return matches
