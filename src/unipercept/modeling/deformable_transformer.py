"""Deformable DETR's encoder and decoder (Zhu et al., 2021), post-norm as in the paper.

The encoder refines the flattened multi-scale features with deformable self-attention; the
decoder refines object queries with self-attention and deformable cross-attention, optionally
updating each query's reference box after every layer (iterative box refinement).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unipercept.modeling.deformable_attention import MultiScaleDeformableAttention
from unipercept.modeling.heads import in_float32
from unipercept.modeling.outputs import DecoderStates, MultiScaleFeatures, Queries
from unipercept.ops.linear import linear


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x), with x clamped into [eps, 1 - eps] so that boxes at the border stay finite."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class FeedForward(nn.Module):
    """Linear - activation - dropout - linear - dropout."""

    def __init__(
        self, *, hidden_dim: int, ffn_dim: int, dropout: float = 0.1, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, hidden_dim)
        activations = {"relu": F.relu, "gelu": F.gelu}
        if activation not in activations:
            raise ValueError(f"activation must be one of {sorted(activations)}, got {activation!r}")
        self.activation = activations[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self.dropout(self.fc2(self.dropout(self.activation(self.fc1(x)))))
        # Dropout is the identity at inference, so on CPU the ReLU fuses into the first product.
        if self.activation is F.relu:
            hidden = linear(x, self.fc1, "relu")
        else:
            hidden = self.activation(linear(x, self.fc1))
        return linear(hidden, self.fc2)


class SelfAttention(nn.Module):
    """Multi-head self-attention whose queries and keys carry a position embedding (values do
    not), as in DETR's decoder."""

    def __init__(self, *, hidden_dim: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(hidden_dim, hidden_dim)
        self.k_proj = nn.Linear(hidden_dim, hidden_dim)
        self.v_proj = nn.Linear(hidden_dim, hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor, position: Tensor, blocked: Tensor | None = None) -> Tensor:
        """Args:
            x: (B, Q, C); position: (B, Q, C).
            blocked: (Q, Q) bool, True where query i may not attend to query j.

        Returns:
            (B, Q, C).
        """
        batch, queries, width = x.shape
        head_dim = width // self.num_heads
        query_key = x + position

        def split(t: Tensor) -> Tensor:
            return t.view(batch, queries, self.num_heads, head_dim).transpose(1, 2)  # (B, M, Q, D)

        attended = F.scaled_dot_product_attention(
            split(linear(query_key, self.q_proj)),
            split(linear(query_key, self.k_proj)),
            split(linear(x, self.v_proj)),
            attn_mask=None if blocked is None else ~blocked,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, M, Q, D)
        return linear(attended.transpose(1, 2).reshape(batch, queries, width), self.out_proj)


class EncoderLayer(nn.Module):
    def __init__(
        self,
        *,
        hidden_dim: int = 256,
        ffn_dim: int = 1024,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            hidden_dim=hidden_dim, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.ffn = FeedForward(
            hidden_dim=hidden_dim, ffn_dim=ffn_dim, dropout=dropout, activation=activation
        )
        self.norm2 = nn.LayerNorm(hidden_dim)

    def forward(self, x: Tensor, features: MultiScaleFeatures, reference_points: Tensor) -> Tensor:
        attended = self.self_attn(
            x + features.position,
            reference_points,
            x,
            features.valid,
            features.spatial_shapes,
            features.level_start_index,
        )
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.ffn(x))


class DeformableEncoder(nn.Module):
    """A stack of deformable self-attention layers over all levels at once."""

    def __init__(self, layers: list[EncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        # Recompute each layer's activations in the backward pass instead of storing them.
        self.gradient_checkpointing = False

    @staticmethod
    def reference_points(features: MultiScaleFeatures) -> Tensor:
        """(B, S, L, 2): every position's own pixel centre, normalised by the valid extent of
        its level and then projected onto every level."""
        valid_ratios = features.valid_ratios  # (B, L, 2)
        dtype, device = valid_ratios.dtype, valid_ratios.device
        points = []
        for level, (height, width) in enumerate(features.shapes):
            ref_y, ref_x = torch.meshgrid(
                torch.linspace(0.5, height - 0.5, height, dtype=dtype, device=device),
                torch.linspace(0.5, width - 0.5, width, dtype=dtype, device=device),
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)  # (B, HW)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)  # (B, HW)
            points.append(torch.stack((ref_x, ref_y), -1))  # (B, HW, 2)
        return torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]  # (B, S, L, 2)

    def forward(self, features: MultiScaleFeatures) -> Tensor:
        """Returns the encoded features, (B, S, C)."""
        x = features.tokens
        reference_points = self.reference_points(features)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, features, reference_points, use_reentrant=False)
            else:
                x = layer(x, features, reference_points)
        return x


class DecoderLayer(nn.Module):
    def __init__(
        self,
        *,
        hidden_dim: int = 256,
        ffn_dim: int = 1024,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(hidden_dim=hidden_dim, num_heads=num_heads, dropout=dropout)
        self.norm1 = nn.LayerNorm(hidden_dim)
        self.cross_attn = MultiScaleDeformableAttention(
            hidden_dim=hidden_dim, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.norm2 = nn.LayerNorm(hidden_dim)
        self.ffn = FeedForward(
            hidden_dim=hidden_dim, ffn_dim=ffn_dim, dropout=dropout, activation=activation
        )
        self.norm3 = nn.LayerNorm(hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        position: Tensor,
        reference_points: Tensor,
        memory: Tensor,
        features: MultiScaleFeatures,
        blocked: Tensor | None,
    ) -> Tensor:
        x = self.norm1(x + self.dropout(self.self_attn(x, position, blocked)))
        attended = self.cross_attn(
            x + position,
            reference_points,
            memory,
            features.valid,
            features.spatial_shapes,
            features.level_start_index,
        )
        x = self.norm2(x + self.dropout(attended))
        return self.norm3(x + self.ffn(x))


class DeformableDecoder(nn.Module):
    """A stack of decoder layers; with ``box_heads`` each layer moves the reference boxes.

    Args:
        layers: the decoder layers.
        look_forward_twice: DINO's refinement: the box predicted by layer l is built on layer
            l-1's prediction *before* it is detached, so layer l's box loss also trains layer
            l-1. The reference the next layer samples around is detached either way.
    """

    def __init__(self, layers: list[DecoderLayer], *, look_forward_twice: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.look_forward_twice = look_forward_twice
        self.gradient_checkpointing = False

    def forward(
        self,
        queries: Queries,
        memory: Tensor,
        features: MultiScaleFeatures,
        box_heads: nn.ModuleList | None = None,
    ) -> DecoderStates:
        """Args:
        queries: initial states, positions and reference points.
        memory: (B, S, C) encoder output.
        features: the multi-scale layout of ``memory``.
        box_heads: one head per layer mapping (B, Q, C) to (B, Q, 4) box deltas in logit
            space; given, references are refined layer by layer.
        """
        x = queries.content
        reference = queries.reference_points  # (B, Q, 2 | 4), detached input of the next layer
        undetached = reference
        valid_ratios = features.valid_ratios  # (B, L, 2)
        hidden, references, refined = [], [reference], []
        for index, layer in enumerate(self.layers):
            if reference.shape[-1] == 4:
                per_level = (
                    reference[:, :, None] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
                )
            else:
                per_level = reference[:, :, None] * valid_ratios[:, None]  # (B, Q, L, 2)
            arguments = (
                x,
                queries.position,
                per_level,
                memory,
                features,
                queries.self_attention_mask,
            )
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, *arguments, use_reentrant=False)
            else:
                x = layer(*arguments)
            hidden.append(x)
            if box_heads is not None:
                delta = in_float32(box_heads[index], x)  # (B, Q, 4)
                base = undetached if self.look_forward_twice else reference
                if reference.shape[-1] == 4:
                    boxes = (delta + inverse_sigmoid(base)).sigmoid()
                else:
                    boxes = torch.cat(
                        (delta[..., :2] + inverse_sigmoid(base), delta[..., 2:]), -1
                    ).sigmoid()
                refined.append(boxes)
                undetached = boxes
                reference = boxes.detach()
            references.append(reference)
        return DecoderStates(
            hidden_states=torch.stack(hidden),
            reference_points=tuple(references),
            refined_boxes=torch.stack(refined) if refined else None,
        )
