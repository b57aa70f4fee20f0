"""UNINEXT's re-identification head: extra deformable decoder layers and an embedding MLP.

The last decoder output is refined by its own deformable decoder layers (2 in the released
models), which sample the encoder memory around the final predicted boxes, held fixed as
reference boxes, and an MLP(256, 256, 256, 3) turns the result into association embeddings
(``projects/UNINEXT/uninext/models/ddetrs_vid_dn.py:44-49``; ``ddetrs_dn.py:387-391,449-457``;
``DeformableReidHead`` in ``models/deformable_detr/deformable_transformer_dino.py:500-520``).
Memory and boxes are detached (UNINEXT feeds ``memory.detach()`` and
``inter_references[-1].detach()``), so the re-id loss does not train the detector through them.

UNINEXT quirk kept here: ``DeformableReidHead.forward`` is called with seven positional
arguments, so the padding mask lands in its ``query_pos`` parameter (which it overwrites) and
the cross-attention runs with ``src_padding_mask=None``: padded memory tokens are *not* masked
(``ddetrs_dn.py:451-453``). The fixture confirms this on its zero-padded image.

The layers reuse the project's :class:`~unipercept.modeling.deformable_transformer.DecoderLayer`;
UNINEXT's checkpoint keys map onto it with :data:`KEY_RENAMES` and
:func:`convert_reid_state_dict`.
"""

from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch import Tensor, nn

from unipercept.modeling.deformable_transformer import DecoderLayer
from unipercept.modeling.heads import MLP
from unipercept.modeling.outputs import MultiScaleFeatures

#: UNINEXT key (relative to ``detr.reid_embed_head.``) -> this module's key. The first pattern
#: that matches decides; UNINEXT's ``norm2`` follows self-attention and ``norm1``
#: cross-attention, the other way round from the project's layer. ``self_attn.in_proj_*`` are
#: not renamed but split into ``q_proj``/``k_proj``/``v_proj`` by
#: :func:`convert_reid_state_dict`.
KEY_RENAMES: list[tuple[str, str]] = [
    (r"^0\.layers\.(\d+)\.norm1\.", r"layers.\1.norm2."),
    (r"^0\.layers\.(\d+)\.norm2\.", r"layers.\1.norm1."),
    (r"^0\.layers\.(\d+)\.linear1\.", r"layers.\1.ffn.fc1."),
    (r"^0\.layers\.(\d+)\.linear2\.", r"layers.\1.ffn.fc2."),
    (r"^0\.", ""),  # cross_attn.*, self_attn.out_proj.*, norm3.*, ref_point_head.*
    (r"^1\.", "embed."),
]

_IN_PROJ = re.compile(r"^0\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$")


def convert_reid_state_dict(uninext_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """UNINEXT's re-id head weights -> :class:`UninextReidHead`'s.

    Args:
        uninext_sd: the entries under ``detr.reid_embed_head.`` with that prefix removed
            (``0.layers.{i}.*``, ``0.ref_point_head.*``, ``1.layers.{j}.*``).

    Returns:
        a state dict for :class:`UninextReidHead` (``strict=True`` loadable). The packed
        ``nn.MultiheadAttention`` projection ``in_proj_*`` (rows q, k, v) is split into
        ``q_proj``, ``k_proj`` and ``v_proj``.
    """
    converted: dict[str, Tensor] = {}
    for key, value in uninext_sd.items():
        packed = _IN_PROJ.match(key)
        if packed:
            layer, kind = packed.groups()
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                converted[f"layers.{layer}.self_attn.{name}_proj.{kind}"] = part.clone()
            continue
        for pattern, replacement in KEY_RENAMES:
            if re.match(pattern, key):
                converted[re.sub(pattern, replacement, key, count=1)] = value
                break
        else:
            raise KeyError(f"unexpected key in UNINEXT's re-id head: {key!r}")
    return converted


def box_sine_embedding(boxes: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine embedding of normalised boxes (DINO's ``gen_sineembed_for_position``, UNINEXT's
    ``get_sine_pos_embed``, ``deformable_transformer_dino.py:608``).

    Each coordinate c in [0, 1] becomes ``num_feats`` features: ``c * 2 * pi / t_i`` with
    ``t_i = temperature ** (2 * (i // 2) / num_feats)``, sine at even i and cosine at odd i.
    The per-coordinate blocks are ordered y, x, w, h (x and y exchanged).

    Args:
        boxes: (B, Q, 4) cxcywh (UNINEXT passes the level-0 box times the valid ratios), or
            (B, Q, 2) points.
        num_feats: features per coordinate.
        temperature: base of the wavelengths.

    Returns:
        (B, Q, boxes.shape[-1] * num_feats), in float32 at least (the wavelengths overflow half
        precision).
    """
    dtype = torch.promote_types(boxes.dtype, torch.float32)
    # UNINEXT computes the wavelengths in float32 whatever the input dtype.
    index = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    wavelengths = temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / num_feats)
    angles = boxes.to(dtype)[..., None] * (2 * math.pi) / wavelengths.to(dtype)  # (B, Q, n, F)
    embedded = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), -1).flatten(-2)
    if boxes.shape[-1] >= 2:
        order = [1, 0, *range(2, boxes.shape[-1])]
        embedded = embedded[..., order, :]  # (B, Q, n, F) with y first
    return embedded.flatten(-2)  # (B, Q, n * F)


def valid_ratios_from_padding(pad_masks: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """Fraction of every level that the image covers, as UNINEXT's ``get_valid_ratio``
    (``deformable_transformer_dino.py:164``): valid rows counted in the first column, valid
    columns in the first row.

    Args:
        pad_masks: one (B, h_l, w_l) bool mask per level, True on padding.

    Returns:
        (B, L, 2) ratios (w, h).
    """
    ratios = []
    for mask in pad_masks:
        _, height, width = mask.shape
        valid_height = (~mask[:, :, 0]).sum(1).float() / height
        valid_width = (~mask[:, 0, :]).sum(1).float() / width
        ratios.append(torch.stack((valid_width, valid_height), -1))
    return torch.stack(ratios, 1)


class UninextReidHead(nn.Module):
    """Deformable decoder layers around fixed boxes, then an embedding MLP.

    Args:
        num_layers: decoder layers (2 in the released models; count the ``0.layers.{i}`` keys).
        hidden_dim: model width.
        ffn_dim: feed-forward width of the layers (2048 released).
        num_heads: attention heads.
        num_levels: feature levels of the memory.
        num_points: deformable sampling points per head and level (4 released).
        embed_dim: width of the returned embeddings.
    """

    def __init__(
        self,
        *,
        num_layers: int = 2,
        hidden_dim: int = 256,
        ffn_dim: int = 2048,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        embed_dim: int = 256,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(
                hidden_dim=hidden_dim,
                ffn_dim=ffn_dim,
                num_heads=num_heads,
                num_levels=num_levels,
                num_points=num_points,
                dropout=0.0,
            )
            for _ in range(num_layers)
        )
        self.ref_point_head = MLP(
            input_dim=2 * hidden_dim, hidden_dim=hidden_dim, output_dim=hidden_dim, num_layers=2
        )
        self.embed = MLP(
            input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=embed_dim, num_layers=3
        )

    def decode(
        self, hidden: Tensor, boxes: Tensor, memory: Tensor, features: MultiScaleFeatures
    ) -> Tensor:
        """The decoder layers' output, before the embedding MLP.

        Args:
            hidden: (B, Q, C) output of the detector's last decoder layer.
            boxes: (B, Q, 4) final boxes, normalised cxcywh; detached here.
            memory: (B, S, C) encoder output; detached here.
            features: the layout of ``memory`` (``spatial_shapes``, ``level_start_index``,
                ``valid_ratios``); its ``valid`` mask is ignored, as in UNINEXT (module
                docstring).

        Returns:
            (B, Q, C).
        """
        boxes = boxes.detach()
        memory = memory.detach()
        ratios = features.valid_ratios  # (B, L, 2)
        per_level = boxes[:, :, None] * torch.cat((ratios, ratios), -1)[:, None]  # (B, Q, L, 4)
        position = self.ref_point_head(box_sine_embedding(per_level[:, :, 0]).to(hidden.dtype))
        unmasked = dataclasses.replace(
            features, valid=torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        )
        x = hidden
        for layer in self.layers:
            x = layer(x, position, per_level, memory, unmasked, None)
        return x

    def forward(
        self, hidden: Tensor, boxes: Tensor, memory: Tensor, features: MultiScaleFeatures
    ) -> Tensor:
        """Association embeddings, (B, Q, embed_dim); arguments as :meth:`decode`."""
        return self.embed(self.decode(hidden, boxes, memory, features))
