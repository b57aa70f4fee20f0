"""Mask losses of DETR-style segmentation (DETR, Mask2Former, Mask Frozen-DETR): sigmoid focal
and dice losses between the mask logits of matched queries and their target masks, either on
every pixel or on a set of importance-sampled points (PointRend)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from unipercept.criterion.losses import sigmoid_focal_loss


def dice_loss(logits: Tensor, targets: Tensor, normalizer: float | Tensor) -> Tensor:
    """Dice loss with +1 smoothing (DETR, Mask2Former), summed over masks and divided by
    ``normalizer``.

    Per mask: ``1 - (2 * sum(p * t) + 1) / (sum(p) + sum(t) + 1)`` with ``p = sigmoid(logits)``;
    the smoothing makes an empty prediction of an empty target cost nothing.

    Args:
        logits: (M, P) mask logits, flattened pixels or sampled points.
        targets: (M, P) targets in [0, 1].
        normalizer: number the sum over masks is divided by (the number of target masks).

    Returns:
        scalar loss.
    """
    probability = logits.sigmoid()
    numerator = 2 * (probability * targets).sum(-1)  # (M,)
    denominator = probability.sum(-1) + targets.sum(-1)  # (M,)
    loss = 1 - (numerator + 1) / (denominator + 1)  # (M,)
    return loss.sum() / normalizer


def point_sample(inputs: Tensor, coords: Tensor) -> Tensor:
    """Bilinear samples of ``inputs`` at normalised points (PointRend's convention).

    A coordinate of 0 is the left/top edge of the image and 1 the right/bottom edge, so the
    centre of pixel ``j`` of ``W`` is ``(j + 0.5) / W``; points outside read zeros.

    Args:
        inputs: (M, C, H, W) maps.
        coords: (M, P, 2) points as (x, y) in [0, 1].

    Returns:
        (M, C, P) sampled values.
    """
    grid = (2 * coords - 1).to(inputs.dtype).unsqueeze(2)  # (M, P, 1, 2)
    sampled = F.grid_sample(inputs, grid, mode="bilinear", align_corners=False)  # (M, C, P, 1)
    return sampled.squeeze(3)  # (M, C, P)


@torch.no_grad()
def uncertain_point_coords(
    logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Points biased towards where the prediction is least certain (PointRend, Mask2Former).

    ``num_points * oversample_ratio`` uniform points are drawn; the
    ``importance_sample_ratio * num_points`` of them with the highest uncertainty ``-|logit|``
    are kept and the rest of the ``num_points`` are fresh uniform points, so that confident
    regions are still visited.

    Args:
        logits: (M, 1, h, w) mask logits.
        num_points: points per mask.
        oversample_ratio: at least 1.
        importance_sample_ratio: in [0, 1].
        generator: random number generator on ``logits``' device.

    Returns:
        (M, num_points, 2) points as (x, y) in [0, 1], without gradient.
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must have shape (M, 1, h, w), got {tuple(logits.shape)}")
    if num_points < 0:
        raise ValueError(f"num_points must be non-negative, got {num_points}")
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be at least 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(
            f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}"
        )
    num_masks = logits.shape[0]
    options = {"dtype": logits.dtype, "device": logits.device, "generator": generator}
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(num_masks, num_sampled, 2, **options)  # (M, S, 2)
    uncertainty = -point_sample(logits, candidates).squeeze(1).abs()  # (M, S)
    num_uncertain = int(importance_sample_ratio * num_points)
    index = uncertainty.topk(num_uncertain, dim=1).indices  # (M, U)
    uncertain = candidates.gather(1, index[..., None].expand(-1, -1, 2))  # (M, U, 2)
    uniform = torch.rand(num_masks, num_points - num_uncertain, 2, **options)  # (M, N - U, 2)
    return torch.cat([uncertain, uniform], 1)  # (M, N, 2)


def mask_losses(
    mask_logits: Tensor,
    target_masks: Tensor,
    normalizer: float | Tensor,
    *,
    num_points: int | None = None,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Sigmoid focal and dice losses of matched masks.

    Both losses are per-mask means over the compared locations (pixels or points), summed over
    masks and divided by ``normalizer``: the focal loss of :func:`sigmoid_focal_loss` over
    (M, P) is therefore divided by ``normalizer * P``, and dice is a per-mask ratio already.

    Without ``num_points`` the targets are resized to the logits' resolution (bilinear,
    ``align_corners=False``) and every pixel counts. With ``num_points`` the locations are
    chosen by :func:`uncertain_point_coords` on the (detached) logits and both logits and
    full-resolution targets are point-sampled there (Mask2Former), which saves memory at high
    resolution.

    Args:
        mask_logits: (M, h, w) mask logits of the M matched queries.
        target_masks: (M, H, W) bool or float target masks of any resolution.
        normalizer: number the sums over masks are divided by (the number of target masks).
        num_points: points per mask, or None for the dense loss.
        oversample_ratio, importance_sample_ratio: see :func:`uncertain_point_coords`.
        generator: random number generator of the point sampling.

    Returns:
        ``loss_mask`` (focal, alpha 0.25, gamma 2) and ``loss_dice``: scalars. With M = 0 both
        are zeros still connected to ``mask_logits``, so that backward works.
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"mask_logits must have shape (M, h, w), got {tuple(mask_logits.shape)}")
    if target_masks.dim() != 3 or len(target_masks) != len(mask_logits):
        raise ValueError(
            f"target_masks must have shape ({len(mask_logits)}, H, W), "
            f"got {tuple(target_masks.shape)}"
        )
    if num_points is not None and num_points < 1:
        raise ValueError(f"num_points must be positive or None, got {num_points}")
    if len(mask_logits) == 0:
        zero = mask_logits.sum() * 0
        return {"loss_mask": zero, "loss_dice": zero.clone()}
    targets = target_masks.to(mask_logits.dtype)[:, None]  # (M, 1, H, W)
    if num_points is None:
        size = mask_logits.shape[-2:]
        targets = F.interpolate(targets, size=size, mode="bilinear", align_corners=False)
        logits = mask_logits.flatten(1)  # (M, h*w)
        targets = targets.flatten(1)  # (M, h*w)
    else:
        coords = uncertain_point_coords(
            mask_logits[:, None].detach(),
            num_points,
            oversample_ratio,
            importance_sample_ratio,
            generator=generator,
        )  # (M, P, 2)
        logits = point_sample(mask_logits[:, None], coords).squeeze(1)  # (M, P)
        targets = point_sample(targets, coords).squeeze(1)  # (M, P)
    num_locations = logits.shape[1]
    return {
        "loss_mask": sigmoid_focal_loss(logits, targets, normalizer * num_locations),
        "loss_dice": dice_loss(logits, targets, normalizer),
    }
