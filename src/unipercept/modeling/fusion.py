"""Bi-XAtt early fusion (GLIP, UNINEXT): visual and prompt tokens attend to each other.

One attention matrix between visual positions and prompt tokens serves both directions: its
rows (over prompt tokens) update the visual tokens, its columns (over visual positions) update
the prompt tokens. Both updates are added back through small learned scales, so fusion starts
as an identity and cannot wreck a pretrained detector on the first steps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Logits are clamped before the softmax, as GLIP does, so no row overflows in half precision.
_LOGIT_LIMIT = 50000.0


class BiAttentionLayer(nn.Module):
    """One bidirectional cross-attention between visual and prompt tokens.

    Args:
        hidden_dim: width C of both token sets.
        num_heads: attention heads.
        init_scale: initial value of the scales that add the updates back.
    """

    def __init__(
        self,
        *,
        hidden_dim: int = 256,
        num_heads: int = 8,
        dropout: float = 0.1,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(
                f"hidden_dim ({hidden_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.visual_norm = nn.LayerNorm(hidden_dim)
        self.prompt_norm = nn.LayerNorm(hidden_dim)
        self.visual_query = nn.Linear(hidden_dim, hidden_dim)
        self.prompt_key = nn.Linear(hidden_dim, hidden_dim)
        self.visual_value = nn.Linear(hidden_dim, hidden_dim)
        self.prompt_value = nn.Linear(hidden_dim, hidden_dim)
        self.visual_out = nn.Linear(hidden_dim, hidden_dim)
        self.prompt_out = nn.Linear(hidden_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.visual_scale = nn.Parameter(torch.full((hidden_dim,), init_scale))
        self.prompt_scale = nn.Parameter(torch.full((hidden_dim,), init_scale))

    def forward(
        self, visual: Tensor, visual_valid: Tensor, prompt: Tensor, prompt_valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Args:
            visual: (B, S, C); visual_valid: (B, S) bool, False on padding.
            prompt: (B, L, C); prompt_valid: (B, L) bool.

        Returns:
            updated (visual, prompt), same shapes.
        """
        batch, positions, width = visual.shape
        length = prompt.shape[1]
        heads, head_dim = self.num_heads, width // self.num_heads
        v, p = self.visual_norm(visual), self.prompt_norm(prompt)

        def split(x: Tensor, count: int) -> Tensor:
            return x.view(batch, count, heads, head_dim).transpose(1, 2)  # (B, M, count, d)

        logits = split(self.visual_query(v), positions) @ split(
            self.prompt_key(p), length
        ).transpose(-1, -2)
        logits = (logits * head_dim**-0.5).clamp(-_LOGIT_LIMIT, _LOGIT_LIMIT)  # (B, M, S, L)
        to_visual = logits.masked_fill(~prompt_valid[:, None, None, :], float("-inf")).softmax(-1)
        to_prompt = (
            logits.transpose(-1, -2)
            .masked_fill(~visual_valid[:, None, None, :], float("-inf"))
            .softmax(-1)
        )  # (B, M, L, S)
        visual_update = self.dropout(to_visual) @ split(
            self.prompt_value(p), length
        )  # (B, M, S, d)
        prompt_update = self.dropout(to_prompt) @ split(
            self.visual_value(v), positions
        )  # (B, M, L, d)
        visual_update = self.visual_out(
            visual_update.transpose(1, 2).reshape(batch, positions, width)
        )
        prompt_update = self.prompt_out(prompt_update.transpose(1, 2).reshape(batch, length, width))
        return (
            visual + self.visual_scale * visual_update,
            prompt + self.prompt_scale * prompt_update,
        )


class BiXAttnFusion(nn.Module):
    """A stack of :class:`BiAttentionLayer` applied before the deformable encoder."""

    def __init__(self, layers: list[BiAttentionLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(
        self, visual: Tensor, visual_valid: Tensor, prompt: Tensor, prompt_valid: Tensor
    ) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            visual, prompt = layer(visual, visual_valid, prompt, prompt_valid)
        return visual, prompt
