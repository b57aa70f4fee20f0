"""UNINEXT's prediction heads and the encoder's proposal features.

- :class:`VLAlign`: the decoder class head, a dot product between queries and (fused) text
  tokens (UNINEXT ``VL_Align``, ``deformable_detr.py:34-68``). Loads ``detr.detr.class_embed.{l}.``
  for decoder layer ``l``.
- :class:`StillClassifier`: the encoder's class-agnostic objectness, a Linear(256, 1) that ranks
  the proposals (``detr.detr.class_embed.{L}.``, L = number of decoder layers).
- :class:`MLP`: the box head (``detr.detr.bbox_embed.{i}.``; entry L scores the encoder's
  proposals). The IoU heads (``detr.detr.iou_head.{l}.``) are plain ``nn.Linear(256, 1)``.
- :func:`pool_text`: the masked mean of the fused text that grounding and SOT/VOS score
  against instead of the individual tokens.
- :func:`encoder_output_proposals`: the encoder's proposal boxes and the features they are
  scored on (``gen_encoder_output_proposals``, ``deformable_transformer_dino.py:132-162``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.modeling.heads import MLP

__all__ = ["MLP", "StillClassifier", "VLAlign", "encoder_output_proposals", "pool_text"]

# VL_Align clamps its logits to the range of float16 (CLAMP_DOT_PRODUCT, on by default).
_LOGIT_LIMIT = 50000.0


def _prior_bias(prior_prob: float) -> float:
    """The bias whose sigmoid is ``prior_prob`` (focal-loss initialisation)."""
    return -math.log((1 - prior_prob) / prior_prob)


class VLAlign(nn.Module):
    """Class logits as scaled dot products between queries and normalized text tokens.

    With ``t = normalize(text)`` (L2 over channels)::

        logit[b, q, l] = hidden[b, q] . W(t[b, l] / 2) / exp(log_scale)
                         + t[b, l] . bias_lang + bias0

    where ``W`` is ``dot_product_projection_text`` (Linear(Ct, C), with bias). Note that only the
    projected tokens are halved, not the ``bias_lang`` term.

    Args:
        hidden_dim: query width C (256).
        text_dim: text width Ct (768 for BERT-base).
        log_scale: initial ``log_scale`` (UNINEXT ``DYHEAD.LOG_SCALE`` = 0).
        prior_prob: initial ``sigmoid(bias0)`` (``DYHEAD.PRIOR_PROB`` = 0.01).
        clamp: clamp the logits to +-50000 (``CLAMP_DOT_PRODUCT``, on in UNINEXT).
    """

    def __init__(
        self,
        *,
        hidden_dim: int = 256,
        text_dim: int = 768,
        log_scale: float = 0.0,
        prior_prob: float = 0.01,
        clamp: bool = True,
    ) -> None:
        super().__init__()
        self.clamp = clamp
        self.dot_product_projection_text = nn.Linear(text_dim, hidden_dim)
        self.log_scale = nn.Parameter(torch.tensor([log_scale]))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        self.bias0 = nn.Parameter(torch.tensor([_prior_bias(prior_prob)]))

    def forward(self, hidden: Tensor, text: Tensor) -> Tensor:
        """Score every query against every text row.

        Args:
            hidden: (B, Q, C) decoder outputs.
            text: (B, L, Ct) fused text tokens (detection: all ``max_query_len`` positions,
                padding included) or pooled rows (grounding/SOT: (B, 1, Ct) from
                :func:`pool_text`).

        Returns:
            (B, Q, L) logits.
        """
        text = F.normalize(text, p=2, dim=-1)  # (B, L, Ct)
        tokens = self.dot_product_projection_text(text / 2.0)  # (B, L, C)
        token_bias = torch.matmul(text, self.bias_lang) + self.bias0  # (B, L)
        logits = torch.matmul(hidden, tokens.transpose(-1, -2)) / self.log_scale.exp()
        logits = logits + token_bias.unsqueeze(1)  # (B, Q, L)
        if self.clamp:
            logits = logits.clamp(min=-_LOGIT_LIMIT, max=_LOGIT_LIMIT)
        return logits


class StillClassifier(nn.Module):
    """The encoder's class-agnostic objectness: Linear(C, 1) on the proposal features.

    UNINEXT passes the pooled text too and ignores it; here it is not an input.

    Args:
        hidden_dim: feature width C (256).
        prior_prob: initial ``sigmoid(body.bias)``.
    """

    def __init__(self, *, hidden_dim: int = 256, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.body = nn.Linear(hidden_dim, 1)
        nn.init.constant_(self.body.bias, _prior_bias(prior_prob))

    def forward(self, features: Tensor) -> Tensor:
        """(B, S, C) proposal features -> (B, S, 1) objectness logits."""
        return self.body(features)


def pool_text(text: Tensor, mask: Tensor) -> Tensor:
    """Masked mean of the text tokens (UNINEXT ``agg_lang_feat``, ``average``).

    The mean includes every unmasked token, [CLS] and [SEP] too; for SOT/VOS templates the
    bool mask's padding *is* excluded here even though the fusion ignores it.

    Args:
        text: (B, L, C) fused text tokens.
        mask: (B, L) int64 or bool, nonzero on real tokens.

    Returns:
        (B, 1, C) pooled rows, the classifier text of grounding and SOT/VOS.
    """
    weights = mask.to(text.dtype)  # (B, L)
    pooled = (text * weights.unsqueeze(-1)).sum(1) / weights.sum(-1, keepdim=True)  # (B, C)
    return pooled.unsqueeze(1)


def encoder_output_proposals(
    memory: Tensor,
    pad_mask: Tensor,
    spatial_shapes: Sequence[tuple[int, int]] | Tensor,
    *,
    enc_output: nn.Module,
    enc_output_norm: nn.Module,
) -> tuple[Tensor, Tensor]:
    """A proposal box for every encoder token, and the features it is scored on.

    Token (x, y) of level l proposes the box centred on its cell, ``(x + 0.5) / W_valid``,
    ``(y + 0.5) / H_valid``, of width and height ``0.05 * 2^l`` (relative to the valid image).
    Proposals of padded tokens, and proposals with any coordinate outside (0.01, 0.99), are
    +inf, and their memory is zeroed before the projection, so their features are
    ``enc_output_norm(enc_output(0))``. UNINEXT does not drop them from the top-k.

    Args:
        memory: (B, S, C) encoder output, levels flattened in order.
        pad_mask: (B, S) bool, True on padding.
        spatial_shapes: (H_l, W_l) of each level, as pairs or an (L, 2) tensor.
        enc_output: ``transformer.enc_output``, Linear(C, C).
        enc_output_norm: ``transformer.enc_output_norm``, LayerNorm(C).

    Returns:
        features: (B, S, C) input of the encoder's class and box heads.
        proposals: (B, S, 4) cxcywh proposals in logit space (inverse sigmoid), +inf if unusable.
    """
    batch = memory.shape[0]
    proposals = []
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        height, width = int(height), int(width)
        padded = pad_mask[:, start : start + height * width].view(batch, height, width)
        valid_height = (~padded[:, :, 0]).sum(1)  # (B,)
        valid_width = (~padded[:, 0, :]).sum(1)  # (B,)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device),
            torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device),
            indexing="ij",
        )
        grid = torch.stack([grid_x, grid_y], -1)  # (H, W, 2) xy
        scale = torch.stack([valid_width, valid_height], -1).view(batch, 1, 1, 2)
        centres = (grid.unsqueeze(0) + 0.5) / scale  # (B, H, W, 2)
        sizes = torch.full_like(centres, 0.05 * 2.0**level)
        proposals.append(torch.cat([centres, sizes], -1).view(batch, -1, 4))  # (B, HW, 4)
        start += height * width
    boxes = torch.cat(proposals, 1)  # (B, S, 4) cxcywh
    usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1, keepdim=True)  # (B, S, 1)
    logits = torch.log(boxes / (1 - boxes))
    unusable = pad_mask.unsqueeze(-1) | ~usable  # (B, S, 1)
    logits = logits.masked_fill(unusable, float("inf"))
    features = enc_output_norm(enc_output(memory.masked_fill(unusable, 0.0)))
    return features, logits.to(memory.dtype)
