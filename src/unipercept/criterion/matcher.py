"""Hungarian matching between predictions and targets (DETR)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from unipercept.structures import box_convert, generalized_box_iou

# Stands in for non-finite costs so that a diverging step still matches (and its loss, not
# the matcher, reports the problem).
_LARGE_COST = 1e8


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimising a weighted cost.

    The class cost is the focal loss of predicting the target's class minus that of not
    predicting it (Deformable DETR); the box costs are the L1 distance of normalised cxcywh
    boxes and the negative generalised IoU.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the three costs.
        focal_alpha, focal_gamma: focal loss parameters of the class cost.
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("at least one of cost_class, cost_bbox and cost_giou must be non-zero")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def forward(
        self,
        logits: Tensor,
        boxes: Tensor,
        target_labels: Sequence[Tensor],
        target_boxes: Sequence[Tensor],
    ) -> list[tuple[Tensor, Tensor]]:
        """Args:
            logits: (B, Q, K) class logits.
            boxes: (B, Q, 4) normalised cxcywh boxes.
            target_labels: per image, (T_b,) int64 classes.
            target_boxes: per image, (T_b, 4) normalised cxcywh boxes.

        Returns:
            per image, (query_index, target_index): int64 tensors of length min(Q, T_b) on the
            CPU, query indices ascending.
        """
        batch, num_queries, _ = logits.shape
        sizes = [len(t) for t in target_labels]
        if sum(sizes) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty) for _ in range(batch)]
        probability = logits.flatten(0, 1).sigmoid()  # (B*Q, K)
        predicted = boxes.flatten(0, 1)  # (B*Q, 4)
        # A diverging step may predict NaN boxes: give them a placeholder box and the largest
        # cost, so the loss (not the matcher) is where the trouble shows.
        finite = torch.isfinite(predicted).all(-1)  # (B*Q,)
        predicted = torch.where(finite[:, None], predicted, torch.full_like(predicted, 0.5))
        labels = torch.cat(list(target_labels))  # (T,)
        wanted = torch.cat(list(target_boxes))  # (T, 4)
        alpha, gamma = self.focal_alpha, self.focal_gamma
        negative = (1 - alpha) * probability**gamma * -(1 - probability + 1e-8).log()
        positive = alpha * (1 - probability) ** gamma * -(probability + 1e-8).log()
        class_cost = positive[:, labels] - negative[:, labels]  # (B*Q, T)
        box_cost = torch.cdist(predicted, wanted, p=1)  # (B*Q, T)
        giou_cost = -generalized_box_iou(
            box_convert(predicted, "cxcywh", "xyxy"), box_convert(wanted, "cxcywh", "xyxy")
        )
        cost = self.cost_bbox * box_cost + self.cost_class * class_cost + self.cost_giou * giou_cost
        cost = torch.nan_to_num(cost, nan=_LARGE_COST, posinf=_LARGE_COST, neginf=-_LARGE_COST)
        cost[~finite] = _LARGE_COST
        cost = cost.view(batch, num_queries, -1).cpu()  # (B, Q, T)
        matches = []
        for image, block in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(block[image].numpy())
            matches.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return matches
