"""Sine position encodings of image positions and of boxes (DETR, Deformable DETR)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _frequencies(
    num_features: int, temperature: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """(num_features,) wavelengths: pairs of features (sin, cos) share one frequency."""
    index = torch.arange(num_features, dtype=torch.int64, device=device).to(dtype)
    return temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_features)


def _interleave_sin_cos(angles: Tensor) -> Tensor:
    """(..., F) angles -> (..., F) with sin at even and cos at odd positions."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


class SinePositionEncoding(nn.Module):
    """2-D sine encoding of pixel positions, counted over the valid (non-padding) pixels.

    Args:
        num_features: features per axis; the output has 2 * num_features channels (y then x).
        temperature: base of the wavelengths.
        normalize: divide positions by the valid height/width and multiply by ``scale``, so
            encodings do not depend on the image size.
        scale: the range positions are normalised to.
    """

    def __init__(
        self,
        *,
        num_features: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, valid: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Args:
            valid: (B, H, W) bool, True on image pixels.
            dtype: dtype of the result.

        Returns:
            (B, 2 * num_features, H, W) encodings.
        """
        ones = valid.to(dtype)
        y = ones.cumsum(1)  # (B, H, W) 1-based row among valid pixels
        x = ones.cumsum(2)  # (B, H, W)
        if self.normalize:
            eps = 1e-6
            y = (y - 0.5) / (y[:, -1:, :] + eps) * self.scale
            x = (x - 0.5) / (x[:, :, -1:] + eps) * self.scale
        frequencies = _frequencies(self.num_features, self.temperature, valid.device, dtype)
        pos_x = _interleave_sin_cos(x[..., None] / frequencies)  # (B, H, W, F)
        pos_y = _interleave_sin_cos(y[..., None] / frequencies)  # (B, H, W, F)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, H, W)


def box_sine_encoding(
    box_logits: Tensor, num_features: int, temperature: float = 10000.0, scale: float = 2 * math.pi
) -> Tensor:
    """Sine encoding of boxes given as logits (before the sigmoid), as two-stage Deformable
    DETR embeds its proposals.

    Args:
        box_logits: (B, Q, 4) unnormalised cxcywh.
        num_features: features per coordinate.

    Returns:
        (B, Q, 4 * num_features), computed in float32 (the large temperature overflows half
        precision) and returned in the input's dtype.
    """
    frequencies = _frequencies(num_features, temperature, box_logits.device, torch.float32)
    boxes = box_logits.sigmoid().to(torch.float32) * scale  # (B, Q, 4)
    encoded = _interleave_sin_cos(boxes[..., None] / frequencies)  # (B, Q, 4, F)
    return encoded.flatten(2).to(box_logits.dtype)  # (B, Q, 4F)
