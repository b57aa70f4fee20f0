"""The multi-scale deformable attention layer (Zhu et al., 2021): predicted offsets and
weights around reference points, sampled by :func:`unipercept.ops.ms_deform_attn`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.ops import ms_deform_attn
from unipercept.ops.linear import linear


class MultiScaleDeformableAttention(nn.Module):
    """Each query attends to ``num_points`` sampled positions per head and level.

    Args:
        hidden_dim: query and value width C.
        num_heads: attention heads M (C must divide by M).
        num_levels: feature levels L.
        num_points: sampling points P per head and level.
    """

    def __init__(
        self, *, hidden_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(hidden_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(hidden_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(hidden_dim, hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, hidden_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: offsets start on rays around the reference
        point, one direction per head, the p-th point p+1 pixels out; weights start uniform."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        directions = torch.stack([thetas.cos(), thetas.sin()], -1)  # (M, 2)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(
            1, self.num_levels, self.num_points, 1
        )
        grid *= torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        self.sampling_offsets.bias.copy_(grid.view(-1))  # (M*L*P*2,)
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        valid: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
    ) -> Tensor:
        """Args:
            query: (B, Q, C) queries, position embedding already added.
            reference_points: (B, Q, L, 2) points or (B, Q, L, 4) boxes, normalised, per level.
            value: (B, S, C) flattened features of all levels.
            valid: (B, S) bool, False on padding (its values are zeroed).
            spatial_shapes: (L, 2) int64; level_start_index: (L,) int64.

        Returns:
            (B, Q, C) attended features.
        """
        batch, num_queries, _ = query.shape
        num_values = value.shape[1]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = linear(value, self.value_proj).masked_fill(~valid[..., None], 0.0)
        value = value.view(batch, num_values, heads, self.hidden_dim // heads)  # (B, S, M, D)
        offsets = linear(query, self.sampling_offsets)
        offsets = offsets.view(batch, num_queries, heads, levels, points, 2)
        weights = linear(query, self.attention_weights)
        weights = weights.view(batch, num_queries, heads, levels * points)
        weights = F.softmax(weights, -1).view(batch, num_queries, heads, levels, points)
        if reference_points.shape[-1] == 2:
            locations = _point_locations(reference_points, offsets, spatial_shapes)
        elif reference_points.shape[-1] == 4:
            # Offsets are relative to the reference box: half its size at the outermost point.
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                f"reference_points must end in 2 or 4 coordinates, got "
                f"{tuple(reference_points.shape)}"
            )
        output = ms_deform_attn(
            value.contiguous(),
            spatial_shapes,
            level_start_index,
            locations.contiguous(),
            weights.contiguous(),
            check_contents=False,
        )
        return linear(output, self.output_proj)  # (B, Q, C)


def _point_locations(reference_points: Tensor, offsets: Tensor, spatial_shapes: Tensor) -> Tensor:
    """Sampling locations ``reference + offset / (W_l, H_l)``: offsets are in pixels of each
    level.

    Args:
        reference_points: (B, Q, L, 2) normalised points.
        offsets: (B, Q, M, L, P, 2) pixel offsets.
        spatial_shapes: (L, 2) int64 (H_l, W_l).

    Returns:
        (B, Q, M, L, P, 2), in the points' dtype.

    The points and the per-level sizes are laid out over (L, P x 2) first, so that each
    broadcast runs over rows of 2P values instead of pairs: the same arithmetic, elementwise,
    about ten times faster on CPU than broadcasting the (…, 2) shapes directly (the encoder
    computes B x S x M x L x P x 2 of them in every layer).
    """
    batch, queries, heads, levels, points, _ = offsets.shape
    row = (batch, queries, 1, levels, points * 2)
    size = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)  # (L, 2): (W, H)
    size = size[:, None, :].expand(levels, points, 2).reshape(1, 1, 1, levels, points * 2)
    start = reference_points[:, :, None, :, None, :].expand(batch, queries, 1, levels, points, 2)
    start = start.reshape(row)
    flat = offsets.reshape(batch, queries, heads, levels, points * 2)
    if offsets.dtype == reference_points.dtype:
        locations = (flat / size.to(offsets.dtype)).add_(start)
    else:
        # Under autocast: half-precision offsets, float32 points. One float32 pass (a
        # mixed-dtype division and addition would each be a casting pass, and the division
        # would round to half).
        scale = size.to(reference_points.dtype).reciprocal()
        locations = torch.addcmul(start, flat, scale)
    return locations.view(batch, queries, heads, levels, points, 2)
