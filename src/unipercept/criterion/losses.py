"""Loss functions of the set criterion."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    normalizer: float | Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Focal loss (Lin et al., 2017) of independent sigmoid classifiers, summed and divided by
    ``normalizer`` (the number of target objects in DETR-style training).

    Args:
        logits: (..., K) raw scores.
        targets: (..., K) binary targets, same shape.
        normalizer: number the sum is divided by.
        alpha: weight of positives (1 - alpha for negatives); negative disables it.
        gamma: focusing exponent.

    Returns:
        scalar loss.
    """
    probability = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probability * targets + (1 - probability) * (1 - targets)
    loss = cross_entropy * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.sum() / normalizer
