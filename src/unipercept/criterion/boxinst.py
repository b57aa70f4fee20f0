"""BoxInst (Tian et al., CVPR 2021): instance masks learned from box annotations alone.

Two terms replace the mask loss: the projections of the predicted mask onto the x and y axes
must match those of the box (:func:`box_projection_loss`), and neighbouring pixels of similar
colour inside the box should share a label (:func:`pairwise_color_loss`, with the colour
affinities of :func:`color_similarity`).

Neighbourhoods are a dilated ``kernel_size`` x ``kernel_size`` grid around each pixel without
its centre; neighbour ``k`` of the ``kernel_size**2 - 1`` is the ``k``-th offset in row-major
order, e.g. for 3 x 3 with dilation 2: (dy, dx) = (-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 2),
(2, -2), (2, 0), (2, 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# BoxInst's dice keeps the denominator positive when both projections are empty.
_DICE_EPS = 1e-5

# sRGB (linear) to CIE XYZ, and the D65 white point (2° observer): the values of the sRGB
# standard as used by skimage.color.rgb2lab.
_XYZ_FROM_RGB = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)


def _neighbours(inputs: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """Values of each pixel's neighbours, zero outside the map.

    Args:
        inputs: (N, C, H, W) maps.
        kernel_size: odd neighbourhood width.
        dilation: spacing of the neighbourhood.

    Returns:
        (N, C, kernel_size**2 - 1, H, W): ``[:, :, k, y, x]`` is neighbour ``k`` of (y, x).
    """
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and at least 3, got {kernel_size}")
    num, channels, height, width = inputs.shape
    padding = dilation * (kernel_size // 2)  # keeps the output at H x W
    unfolded = F.unfold(inputs, kernel_size, dilation=dilation, padding=padding)
    unfolded = unfolded.view(num, channels, kernel_size**2, height, width)  # (N, C, K*K, H, W)
    centre = kernel_size**2 // 2
    return torch.cat([unfolded[:, :, :centre], unfolded[:, :, centre + 1 :]], 2)


def _inside(like: Tensor, kernel_size: int, dilation: int) -> Tensor:
    """(1, K*K-1, H, W): 1 where neighbour k of a pixel of a map shaped like ``like`` (..., H, W)
    lies in the map, else 0."""
    ones = like.new_ones(1, 1, *like.shape[-2:])  # (1, 1, H, W)
    return _neighbours(ones, kernel_size, dilation)[:, 0]  # (1, K*K-1, H, W)


def rgb_to_lab(images: Tensor) -> Tensor:
    """CIE Lab colours of sRGB images (D65 white point, 2° observer).

    Args:
        images: (B, 3, H, W) sRGB in [0, 1].

    Returns:
        (B, 3, H, W) L in [0, 100], a and b roughly in [-128, 127].
    """
    # Undo the sRGB gamma to get linear intensities.
    linear = torch.where(
        images > 0.04045, ((images.clamp(min=0) + 0.055) / 1.055) ** 2.4, images / 12.92
    )  # (B, 3, H, W)
    matrix = images.new_tensor(_XYZ_FROM_RGB)  # (3, 3)
    white = images.new_tensor(_D65_WHITE)[:, None, None]  # (3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear) / white  # (B, 3, H, W)
    # The cube root is replaced by a line near 0, where its slope is unbounded.
    delta = 6 / 29
    f = torch.where(
        xyz > delta**3, xyz.clamp(min=delta**3) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29
    )  # (B, 3, H, W)
    fx, fy, fz = f.unbind(1)  # (B, H, W) each
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], 1)  # (B, 3, H, W)


@torch.no_grad()
def color_similarity(
    images: Tensor,
    valid: Tensor | None = None,
    kernel_size: int = 3,
    dilation: int = 2,
) -> Tensor:
    """Colour affinity of each pixel to its neighbours: ``exp(-||lab_i - lab_j|| / 2)``.

    A pair gets 0 when the neighbour is outside the image or when either pixel is invalid
    (e.g. batch padding). It is a fixed weight of the loss, hence computed without gradient.

    Args:
        images: (B, 3, H, W) sRGB in [0, 1].
        valid: (B, H, W) bool, False at pixels that are not part of the image; None: all valid.
        kernel_size: odd neighbourhood width.
        dilation: spacing of the neighbourhood.

    Returns:
        (B, K*K-1, H, W) similarities in [0, 1].
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    lab = rgb_to_lab(images)  # (B, 3, H, W)
    distance = (lab[:, :, None] - _neighbours(lab, kernel_size, dilation)).norm(dim=1)
    similarity = torch.exp(-distance / 2)  # (B, K*K-1, H, W)
    if valid is None:
        return similarity * _inside(images, kernel_size, dilation)
    if valid.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"valid must have shape (B, H, W), got {tuple(valid.shape)}")
    weight = valid.to(images.dtype)[:, None]  # (B, 1, H, W)
    # Zero padding of the unfold also marks neighbours outside the image as invalid.
    return similarity * weight * _neighbours(weight, kernel_size, dilation)[:, 0]


def _dice_coefficient(scores: Tensor, targets: Tensor) -> Tensor:
    """BoxInst's dice loss per row: ``1 - 2 sum(x t) / (sum(x^2) + sum(t^2) + eps)``.

    Args:
        scores: (M, L) probabilities.
        targets: (M, L) targets in [0, 1].

    Returns:
        (M,) losses.
    """
    intersection = (scores * targets).sum(-1)  # (M,)
    union = (scores**2).sum(-1) + (targets**2).sum(-1) + _DICE_EPS  # (M,)
    return 1 - 2 * intersection / union


def box_projection_loss(
    mask_logits: Tensor, box_masks: Tensor, normalizer: float | Tensor
) -> Tensor:
    """BoxInst's projection term (eq. 2): dice between the max-projections of the predicted mask
    and of the box mask, on the x axis plus on the y axis, summed over masks / ``normalizer``.

    Dice here is BoxInst's variant with squared terms and no +1 smoothing (see
    :func:`_dice_coefficient`), unlike :func:`unipercept.criterion.mask_losses.dice_loss`.

    Args:
        mask_logits: (M, h, w) mask logits.
        box_masks: (M, h, w) the target boxes rasterised at the logits' resolution, {0, 1}.
        normalizer: number the sum over masks is divided by.

    Returns:
        scalar loss.
    """
    if mask_logits.dim() != 3 or box_masks.shape != mask_logits.shape:
        raise ValueError(
            f"mask_logits and box_masks must share a shape (M, h, w), got "
            f"{tuple(mask_logits.shape)} and {tuple(box_masks.shape)}"
        )
    scores = mask_logits.sigmoid()  # (M, h, w)
    targets = box_masks.to(scores.dtype)  # (M, h, w)
    loss_x = _dice_coefficient(scores.amax(1), targets.amax(1))  # (M,)
    loss_y = _dice_coefficient(scores.amax(2), targets.amax(2))  # (M,)
    return (loss_x + loss_y).sum() / normalizer


def pairwise_color_loss(
    mask_logits: Tensor,
    similarity: Tensor,
    box_masks: Tensor,
    threshold: float = 0.3,
    kernel_size: int = 3,
    dilation: int = 2,
) -> Tensor:
    """BoxInst's pairwise term (eqs. 3-4): ``-log P(y_i = y_j)`` averaged over the pairs of a
    pixel i inside the box and a neighbour j in the map with colour similarity >= threshold.

    ``P(y_i = y_j) = p_i p_j + (1 - p_i)(1 - p_j)`` is evaluated as a log-sum-exp of
    log-sigmoids, which stays finite when the probabilities underflow.

    Args:
        mask_logits: (M, h, w) mask logits.
        similarity: (M, K*K-1, h, w) colour similarities of the mask's image at the logits'
            resolution (see :func:`color_similarity`).
        box_masks: (M, h, w) the target boxes rasterised at the logits' resolution, {0, 1}.
        threshold: least similarity of a counted pair.
        kernel_size, dilation: the neighbourhood ``similarity`` was computed with.

    Returns:
        scalar loss: the sum over counted pairs divided by max(count, 1).
    """
    num_neighbours = kernel_size**2 - 1
    if mask_logits.dim() != 3 or box_masks.shape != mask_logits.shape:
        raise ValueError(
            f"mask_logits and box_masks must share a shape (M, h, w), got "
            f"{tuple(mask_logits.shape)} and {tuple(box_masks.shape)}"
        )
    expected = (mask_logits.shape[0], num_neighbours, *mask_logits.shape[1:])
    if similarity.shape != expected:
        raise ValueError(f"similarity must have shape {expected}, got {tuple(similarity.shape)}")
    log_fg = F.logsigmoid(mask_logits)[:, None]  # (M, 1, h, w)
    log_bg = F.logsigmoid(-mask_logits)[:, None]  # (M, 1, h, w)
    both_fg = log_fg + _neighbours(log_fg, kernel_size, dilation)[:, 0]  # (M, K*K-1, h, w)
    both_bg = log_bg + _neighbours(log_bg, kernel_size, dilation)[:, 0]  # (M, K*K-1, h, w)
    log_same = torch.logaddexp(both_fg, both_bg)  # (M, K*K-1, h, w)
    # Neighbours outside the map are excluded explicitly, so that a threshold of 0 does not
    # count the zero padding.
    counted = (
        (similarity >= threshold)
        & box_masks.bool()[:, None]
        & _inside(mask_logits, kernel_size, dilation).bool()
    )  # (M, K*K-1, h, w)
    weight = counted.to(log_same.dtype)
    return -(log_same * weight).sum() / weight.sum().clamp(min=1)
