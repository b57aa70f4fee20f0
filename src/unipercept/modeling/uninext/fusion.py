"""UNINEXT's early vision-language fusion: GLIP's bidirectional cross-attention block.

UNINEXT runs one such block on the flattened visual tokens of all levels before the first
deformable encoder layer (``NUM_VL_LAYERS: 1``); the fused text is what the class heads score
the queries against. The block differs from a textbook cross-attention in ways that change its
outputs, all kept here:

- both streams are layer-normed first and the residual is added to the *normed* input:
  ``LN(x) + gamma * delta`` (UNINEXT ``fuse_helper.py:173-178``);
- one logit matrix serves both directions; text -> visual rows are shifted by their maximum and
  clamped before the softmax, visual -> text logits are clamped only;
- visual padding is never masked: every text token attends over all visual tokens, padded ones
  included (``fuse_helper.py:86-94``);
- text padding enters through :func:`uninext_text_bias`, which reproduces UNINEXT's
  ``masked_fill(mask == 0, -9e15)`` on the mask *as UNINEXT receives it* (see there).

Parameter names follow UNINEXT's ``transformer.encoder.vl_layers.0.`` so that its weights load
without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.ops.linear import linear

# GLIP's clamp: attention logits are kept within the range of float16.
_LOGIT_LIMIT = 50000.0
# The value UNINEXT writes into padded positions of an integer text mask.
_PADDING_BIAS = -9e15


def uninext_text_bias(mask: Tensor, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The additive bias UNINEXT puts on the visual -> text attention logits.

    UNINEXT adds ``mask.masked_fill(mask == 0, -9e15)`` to the logits (``fuse_helper.py:100``),
    so the result depends on the mask's dtype:

    - integer masks (the tokenizer's ``attention_mask``, detection and grounding): padded tokens
      get -9e15 and real tokens keep their mask value, +1;
    - bool masks (SOT/VOS templates used as text): the fill value -9e15 is cast to ``True``, so
      *every* token gets +1 and template padding is not masked at all. UNINEXT's released
      models were trained and evaluated this way; the template mask still matters for the
      pooled class embedding (:func:`unipercept.modeling.uninext.heads.pool_text`).

    A constant +1 on a row does not change its softmax, but it is kept so that the rounding
    matches UNINEXT's.

    Args:
        mask: (B, L) int64 (1 = token, 0 = padding) or bool (True = token).
        dtype: floating dtype of the result.

    Returns:
        (B, L) bias to add to the logits of each text token.
    """
    if mask.dtype == torch.bool:
        return torch.ones(mask.shape, dtype=dtype, device=mask.device)
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise TypeError(f"UNINEXT's text masks are integer or bool, got {mask.dtype}")
    return mask.to(dtype).masked_fill(mask == 0, _PADDING_BIAS)


class BiMultiHeadAttention(nn.Module):
    """Cross-attention in both directions through one logit matrix (GLIP).

    Args:
        visual_dim: width of the visual tokens.
        text_dim: width of the text tokens.
        embed_dim: internal width, split over the heads.
        num_heads: attention heads.
        dropout: dropout on both attention maps (training only).
        clamp_min_for_underflow: clamp the logits from below at -50000.
        clamp_max_for_overflow: clamp the logits from above at 50000.

    GLIP's ``STABLE_SOFTMAX_2D`` option (off in every UNINEXT config) is not offered.
    """

    def __init__(
        self,
        *,
        visual_dim: int = 256,
        text_dim: int = 768,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.0,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
            )
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout
        self.clamp_min = -_LOGIT_LIMIT if clamp_min_for_underflow else None
        self.clamp_max = _LOGIT_LIMIT if clamp_max_for_overflow else None

        self.v_proj = nn.Linear(visual_dim, embed_dim)
        self.l_proj = nn.Linear(text_dim, embed_dim)
        self.values_v_proj = nn.Linear(visual_dim, embed_dim)
        self.values_l_proj = nn.Linear(text_dim, embed_dim)
        self.out_v_proj = nn.Linear(embed_dim, visual_dim)
        self.out_l_proj = nn.Linear(embed_dim, text_dim)
        for layer in (
            self.v_proj,
            self.l_proj,
            self.values_v_proj,
            self.values_l_proj,
            self.out_v_proj,
            self.out_l_proj,
        ):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)  # (B, M, N, d)

    def _merge(self, x: Tensor) -> Tensor:
        batch, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(batch, length, self.embed_dim)  # (B, N, M * d)

    def _clamp(self, x: Tensor, inplace: bool = False) -> Tensor:
        if self.clamp_min is None and self.clamp_max is None:
            return x
        if inplace:
            return x.clamp_(min=self.clamp_min, max=self.clamp_max)
        return x.clamp(min=self.clamp_min, max=self.clamp_max)

    def forward(
        self, visual: Tensor, text: Tensor, text_bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Args:
            visual: (B, S, Cv) visual tokens (already layer-normed).
            text: (B, L, Ct) text tokens (already layer-normed).
            text_bias: (B, L) added to the visual -> text logits, from
                :func:`uninext_text_bias`; None for no masking.

        Returns:
            (B, S, Cv) visual update and (B, L, Ct) text update.
        """
        # The query is scaled before the product, as in UNINEXT, for the same rounding.
        query = self._split(linear(visual, self.v_proj) * self.scale)  # (B, M, S, d)
        key = self._split(linear(text, self.l_proj))  # (B, M, L, d)
        visual_value = self._split(linear(visual, self.values_v_proj))  # (B, M, S, d)
        text_value = self._split(linear(text, self.values_l_proj))  # (B, M, L, d)

        # The (S, L) maps are the largest tensors of a UNINEXT forward (8 x 8,557 x 2,048 floats,
        # 560 MB, for SOT's two templates at 480x854): without gradients the logits are updated
        # in place, and each softmax runs along its own axis of the one (S, L) layout, so that
        # no transposed copy is made.
        inplace = not torch.is_grad_enabled()
        logits = self._clamp(query @ key.transpose(-1, -2), inplace)  # (B, M, S, L)

        # text -> visual: a softmax over the visual tokens (dim -2), every one counting,
        # padding included (UNINEXT masks none)
        shifted = logits - logits.amax(dim=-2, keepdim=True)
        to_text = self._clamp(shifted, inplace).softmax(dim=-2)  # (B, M, S, L)

        # visual -> text
        if text_bias is not None:
            bias = text_bias.to(logits.dtype)[:, None, None, :]
            logits = logits.add_(bias) if inplace else logits + bias
        to_visual = logits.softmax(dim=-1)  # (B, M, S, L)

        to_visual = F.dropout(to_visual, p=self.dropout, training=self.training)
        to_text = F.dropout(to_text, p=self.dropout, training=self.training)
        visual_update = linear(self._merge(to_visual @ text_value), self.out_v_proj)  # (B, S, Cv)
        text_update = linear(
            self._merge(to_text.transpose(-1, -2) @ visual_value), self.out_l_proj
        )  # (B, L, Ct)
        return visual_update, text_update


class BiAttentionBlock(nn.Module):
    """Pre-norm :class:`BiMultiHeadAttention` with per-channel layer scales.

    The residual is added to the layer-normed inputs, not to the inputs: the outputs are
    ``LN(x) + gamma * delta`` (UNINEXT/GLIP ``BiAttentionBlockForCheckpoint``).

    Args:
        visual_dim, text_dim, embed_dim, num_heads, dropout, clamp_min_for_underflow,
            clamp_max_for_overflow: see :class:`BiMultiHeadAttention`.
        init_gamma: initial value of both layer scales (UNINEXT: 1 / number of encoder layers).
    """

    def __init__(
        self,
        *,
        visual_dim: int = 256,
        text_dim: int = 768,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.0,
        init_gamma: float = 1.0 / 6.0,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
    ) -> None:
        super().__init__()
        self.layer_norm_v = nn.LayerNorm(visual_dim)
        self.layer_norm_l = nn.LayerNorm(text_dim)
        self.attn = BiMultiHeadAttention(
            visual_dim=visual_dim,
            text_dim=text_dim,
            embed_dim=embed_dim,
            num_heads=num_heads,
            dropout=dropout,
            clamp_min_for_underflow=clamp_min_for_underflow,
            clamp_max_for_overflow=clamp_max_for_overflow,
        )
        self.gamma_v = nn.Parameter(torch.full((visual_dim,), init_gamma))
        self.gamma_l = nn.Parameter(torch.full((text_dim,), init_gamma))

    def forward(
        self, visual: Tensor, text: Tensor, text_bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        visual = self.layer_norm_v(visual)
        text = self.layer_norm_l(text)
        delta_visual, delta_text = self.attn(visual, text, text_bias)
        return visual + self.gamma_v * delta_visual, text + self.gamma_l * delta_text


class VLFusion(nn.Module):
    """UNINEXT's early fusion layer (``VLFuse``): one :class:`BiAttentionBlock` as ``b_attn``.

    Loads ``detr.detr.transformer.encoder.vl_layers.0.*`` with the prefix stripped.

    Args:
        visual_dim: width of the visual tokens (the transformer's 256).
        text_dim: width of the text tokens (768 for BERT-base).
        embed_dim: internal attention width (``VL_HIDDEN_DIM``, 2048).
        num_heads: attention heads (hard-coded 8 in UNINEXT).
        dropout: attention dropout during training (UNINEXT trains with 0.1).
        init_gamma: initial layer scales (1 / ``ENC_LAYERS`` = 1/6 in UNINEXT).
        clamp_min_for_underflow: clamp logits at -50000 (UNINEXT config default True).
        clamp_max_for_overflow: clamp logits at 50000 (UNINEXT config default True).

    Example::

        visual, text = fusion(visual, text, uninext_text_bias(text_mask))
    """

    def __init__(
        self,
        *,
        visual_dim: int = 256,
        text_dim: int = 768,
        embed_dim: int = 2048,
        num_heads: int = 8,
        dropout: float = 0.0,
        init_gamma: float = 1.0 / 6.0,
        clamp_min_for_underflow: bool = True,
        clamp_max_for_overflow: bool = True,
    ) -> None:
        super().__init__()
        self.b_attn = BiAttentionBlock(
            visual_dim=visual_dim,
            text_dim=text_dim,
            embed_dim=embed_dim,
            num_heads=num_heads,
            dropout=dropout,
            init_gamma=init_gamma,
            clamp_min_for_underflow=clamp_min_for_underflow,
            clamp_max_for_overflow=clamp_max_for_overflow,
        )

    def forward(
        self, visual: Tensor, text: Tensor, text_bias: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Fuse the visual tokens of all levels with the text tokens.

        Args:
            visual: (B, S, Cv) input_proj outputs of all levels, flattened level by level. Its
                padding is deliberately not an input: UNINEXT does not mask it.
            text: (B, L, Ct) text encoder output (or SOT/VOS template tokens).
            text_bias: (B, L) ``uninext_text_bias(mask)`` for the mask as UNINEXT receives it:
                int64 from the tokenizer (padding masked) or bool from templates (padding
                *not* masked, UNINEXT's quirk); None masks nothing.

        Returns:
            fused visual tokens (B, S, Cv) and fused text tokens (B, L, Ct).
        """
        return self.b_attn(visual, text, text_bias)
