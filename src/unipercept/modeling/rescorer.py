"""A relation-aware re-scorer for referring expressions.

The retrieval head scores each query on its own against the expression's mean token, so
"the square left of the circle" and "the circle left of the square" score alike, and an
extreme ("at the top") cannot be judged from one query. The re-scorer looks at all of an
image's queries together: each query token carries its state, its box and its scores; the
tokens attend to each other (where the others are) and to the expression's fused word tokens
(what was said, in order), and a small head adds a correction to the last layer's logit.

Its output layer starts at zero, so a model that has one but was never fitted answers exactly
as without it. It is fitted on a frozen model by :mod:`unipercept.engine.rescorer_fit`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _attention(
    query: Tensor, key: Tensor, value: Tensor, heads: int, key_valid: Tensor | None
) -> Tensor:
    """Multi-head scaled dot-product attention, (B, N, D) x (B, M, D) -> (B, N, D), with
    ``key_valid`` (B, M) bool masking padded keys (every row has at least one valid key)."""
    batch, count, width = query.shape
    length = key.shape[1]
    head_dim = width // heads

    def split(x: Tensor, n: int) -> Tensor:
        return x.view(batch, n, heads, head_dim).transpose(1, 2)

    logits = split(query, count) @ split(key, length).transpose(-1, -2) * head_dim**-0.5
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[:, None, None, :], torch.finfo(logits.dtype).min)
    mixed = logits.softmax(-1) @ split(value, length)  # (B, heads, N, d)
    return mixed.transpose(1, 2).reshape(batch, count, width)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, key_valid: Tensor | None = None
    ) -> Tensor:
        mixed = _attention(
            self.query(query), self.key(key), self.value(value), self.heads, key_valid
        )
        return self.out(mixed)


class RescorerLayer(nn.Module):
    """Pre-norm self-attention among queries (with box positions), cross-attention to the
    words, and a feed-forward block."""

    def __init__(self, *, width: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"width ({width}) must be divisible by num_heads ({num_heads})")
        self.self_norm = nn.LayerNorm(width)
        self.cross_norm = nn.LayerNorm(width)
        self.ffn_norm = nn.LayerNorm(width)
        self.self_attention = _Attention(width, num_heads)
        self.cross_attention = _Attention(width, num_heads)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_dim), nn.ReLU(), nn.Linear(ffn_dim, width))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, position: Tensor, words: Tensor, word_valid: Tensor) -> Tensor:
        y = self.self_norm(x)
        x = x + self.dropout(self.self_attention(y + position, y + position, y))
        y = self.cross_norm(x)
        x = x + self.dropout(self.cross_attention(y + position, words, words, word_valid))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class ReferringRescorer(nn.Module):
    """Re-scores every query of an image for one referring expression.

    Args:
        hidden_dim: the model's width C (query states and prompt tokens).
        width: the re-scorer's own width.
        num_layers: self- plus cross-attention layers.
        num_heads: attention heads.
        ffn_dim: feed-forward width.
        dropout: dropout while fitting.
    """

    def __init__(
        self,
        *,
        hidden_dim: int,
        width: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        ffn_dim: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.query_input = nn.Linear(hidden_dim + 2, width)
        self.position = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, width))
        self.word_input = nn.Linear(hidden_dim, width)
        self.layers = nn.ModuleList(
            RescorerLayer(width=width, num_heads=num_heads, ffn_dim=ffn_dim, dropout=dropout)
            for _ in range(num_layers)
        )
        self.output = nn.Linear(width, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(
        self,
        hidden: Tensor,
        boxes: Tensor,
        logits: Tensor,
        quality: Tensor,
        words: Tensor,
        word_valid: Tensor,
    ) -> Tensor:
        """Args:
            hidden: (B, Q, C) last decoder layer's query states.
            boxes: (B, Q, 4) their normalised cxcywh boxes.
            logits: (B, Q) their retrieval logits against the expression.
            quality: (B, Q) their quality logits.
            words: (B, L, C) the expression's tokens after early fusion.
            word_valid: (B, L) bool, False on padding.

        Returns:
            (B, Q) the re-scored logits: ``logits`` plus a learned correction.
        """
        scores = torch.stack((logits, quality), -1).to(hidden.dtype)
        x = self.query_input(torch.cat((hidden, scores), -1))
        position = self.position(boxes.to(hidden.dtype))
        tokens = self.word_input(words.to(hidden.dtype))
        for layer in self.layers:
            x = layer(x, position, tokens, word_valid)
        return logits + self.output(x)[..., 0].to(logits.dtype)
