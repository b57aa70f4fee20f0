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
UNINEXT's checkpoint keys map onto it by :mod:`unipercept.modeling.uninext.checkpoint`'s rules.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from unipercept.modeling.deformable_transformer import DecoderLayer
from unipercept.modeling.heads import MLP
from unipercept.modeling.outputs import MultiScaleFeatures


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
