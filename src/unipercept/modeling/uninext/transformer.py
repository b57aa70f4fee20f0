"""UNINEXT's DINO-style deformable transformer: early fusion before the encoder, two-stage
proposals scored by a text-free objectness head, and a decoder whose query positions are
recomputed every layer from that layer's reference box.

The encoder and decoder layers are the project's own (:mod:`unipercept.modeling.
deformable_transformer`); what differs from Deformable DETR lives here: the fusion call, the
proposal rule, mixed query selection and the shared query-position MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from unipercept.modeling.deformable_transformer import (
    DecoderLayer,
    DeformableEncoder,
    EncoderLayer,
    inverse_sigmoid,
)
from unipercept.modeling.outputs import MultiScaleFeatures
from unipercept.modeling.uninext.heads import MLP
from unipercept.modeling.uninext.reid import box_sine_embedding


@dataclass(frozen=True, eq=False)
class TransformerOutput:
    """What the transformer hands to the heads.

    Attributes:
        memory: (B, S, C) encoder output.
        text: (B, L, Ct) text (or template) tokens after fusion.
        hidden: (num_layers, B, Q, C) decoder states.
        init_reference: (B, Q, 4) the selected proposals' boxes, normalised cxcywh.
        references: (num_layers, B, Q, 4) each layer's refined boxes (before ``detach``).
        proposals: (B, S, 4) every encoder position's proposal, logit space (inf if invalid).
        enc_logits: (B, S, 1) encoder objectness.
        enc_boxes_unact: (B, S, 4) encoder box logits (proposal + box head delta).
        topk: (B, Q) the selected encoder positions.
    """

    memory: Tensor
    text: Tensor
    hidden: Tensor
    init_reference: Tensor
    references: Tensor
    proposals: Tensor
    enc_logits: Tensor
    enc_boxes_unact: Tensor
    topk: Tensor


class FeatureResizer(nn.Module):
    """Linear + LayerNorm from the text width to the model width. UNINEXT adds its output times
    0.0 to the decoder queries (mixed selection with ``STILL_TGT_FOR_BOTH``), so it never changes
    an answer; it is kept so that checkpoints load and save unchanged."""

    def __init__(self, *, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim, bias=True)
        self.layer_norm = nn.LayerNorm(out_dim, eps=1e-12)


class UninextEncoder(nn.Module):
    """Deformable encoder layers, each preceded by its fusion block where there is one (UNINEXT
    fuses once, before layer 0; the other slots hold ``nn.Identity`` and are skipped)."""

    def __init__(self, *, layers: list[EncoderLayer], vl_layers: list[nn.Module]) -> None:
        super().__init__()
        if len(vl_layers) != len(layers):
            raise ValueError(f"{len(vl_layers)} fusion slots for {len(layers)} encoder layers")
        self.vl_layers = nn.ModuleList(vl_layers)
        self.layers = nn.ModuleList(layers)
        # Recompute each layer's activations in the backward pass (UNINEXT's USE_CHECKPOINT).
        self.gradient_checkpointing = False

    def forward(
        self, features: MultiScaleFeatures, text: Tensor, text_bias: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Returns the memory (B, S, C) and the fused text (B, L, Ct)."""
        x = features.tokens
        reference_points = DeformableEncoder.reference_points(features)  # (B, S, L, 2)
        for fusion, layer in zip(self.vl_layers, self.layers, strict=True):
            if not isinstance(fusion, nn.Identity):
                x, text = fusion(x, text, text_bias)
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, features, reference_points, use_reentrant=False)
            else:
                x = layer(x, features, reference_points)
        return x, text


class UninextDecoder(nn.Module):
    """Decoder layers sharing one query-position MLP over the sine encoding of each layer's
    reference box (DINO); every layer refines the boxes with its box head."""

    def __init__(self, *, layers: list[DecoderLayer], hidden_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.ref_point_head = MLP(
            input_dim=2 * hidden_dim, hidden_dim=hidden_dim, output_dim=hidden_dim, num_layers=2
        )
        self.gradient_checkpointing = False

    def forward(
        self,
        content: Tensor,
        reference: Tensor,
        memory: Tensor,
        features: MultiScaleFeatures,
        box_heads: nn.ModuleList,
    ) -> tuple[Tensor, Tensor]:
        """Args:
            content: (B, Q, C) initial query states.
            reference: (B, Q, 4) initial boxes, normalised cxcywh.
            box_heads: one box head per layer (UNINEXT shares them with the prediction heads).

        Returns:
            hidden (num_layers, B, Q, C) and the refined boxes (num_layers, B, Q, 4), each
            layer's boxes before detaching (look forward twice).
        """
        ratios = torch.cat([features.valid_ratios, features.valid_ratios], -1)  # (B, L, 4)
        x = content
        hidden, refined = [], []
        for layer, box_head in zip(self.layers, box_heads, strict=False):
            per_level = reference[:, :, None] * ratios[:, None]  # (B, Q, L, 4)
            sine = box_sine_embedding(per_level[:, :, 0]).to(x.dtype)  # (B, Q, 2C)
            position = self.ref_point_head(sine)  # (B, Q, C)
            if self.gradient_checkpointing and self.training:
                x = checkpoint(
                    layer, x, position, per_level, memory, features, None, use_reentrant=False
                )
            else:
                x = layer(x, position, per_level, memory, features, None)
            boxes = (box_head(x) + inverse_sigmoid(reference)).sigmoid()  # (B, Q, 4)
            hidden.append(x)
            refined.append(boxes)
            reference = boxes.detach()
        return torch.stack(hidden), torch.stack(refined)


class UninextTransformer(nn.Module):
    """Fusion + encoder, two-stage query selection, decoder.

    Args:
        encoder, decoder: the layer stacks.
        num_queries: proposals kept (900 in UNINEXT's models).
        hidden_dim: model width.
        text_dim: text-encoder width (the resizer's input).
        num_levels: feature levels.
    """

    def __init__(
        self,
        *,
        encoder: UninextEncoder,
        decoder: UninextDecoder,
        num_queries: int,
        hidden_dim: int = 256,
        text_dim: int = 768,
        num_levels: int = 4,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.num_queries = num_queries
        self.level_embed = nn.Parameter(torch.zeros(num_levels, hidden_dim))
        self.tgt_embed = nn.Embedding(num_queries, hidden_dim)
        self.enc_output = nn.Linear(hidden_dim, hidden_dim)
        self.enc_output_norm = nn.LayerNorm(hidden_dim)
        self.resizer = FeatureResizer(in_dim=text_dim, out_dim=hidden_dim)

    def forward(
        self,
        features: MultiScaleFeatures,
        text: Tensor,
        text_bias: Tensor,
        *,
        class_heads: nn.ModuleList,
        box_heads: nn.ModuleList,
    ) -> TransformerOutput:
        """Args:
        features: the projected maps, flattened; ``position`` is the sine encoding only
            (the level embedding is added here).
        text: (B, L, Ct) prompt tokens; text_bias: (B, L) the fusion's additive bias.
        class_heads: the decoder's class heads plus, last, the encoder objectness head.
        box_heads: the decoder's box heads plus, last, the encoder's.
        """
        level_of_token = torch.repeat_interleave(
            torch.arange(len(features.shapes), device=features.tokens.device),
            torch.as_tensor([h * w for h, w in features.shapes], device=features.tokens.device),
        )  # (S,)
        position = features.position + self.level_embed[level_of_token][None]  # (B, S, C)
        features = replace(features, position=position)
        memory, text = self.encoder(features, text, text_bias)

        output_memory, proposals = self._proposals(memory, features)
        num_layers = len(self.decoder.layers)
        enc_logits = class_heads[num_layers](output_memory)  # (B, S, 1)
        enc_boxes_unact = box_heads[num_layers](output_memory) + proposals  # (B, S, 4)
        topk = torch.topk(enc_logits[..., 0], self.num_queries, dim=1).indices  # (B, Q)
        init_reference = torch.gather(
            enc_boxes_unact, 1, topk[..., None].expand(-1, -1, 4)
        ).sigmoid()  # (B, Q, 4)
        # Mixed query selection: learned content, selected boxes. UNINEXT adds 0.0 times the
        # resized pooled text here, which changes nothing and is left out.
        content = self.tgt_embed.weight[None].expand(memory.shape[0], -1, -1)  # (B, Q, C)
        hidden, references = self.decoder(
            content, init_reference.detach(), memory, features, box_heads
        )
        return TransformerOutput(
            memory=memory,
            text=text,
            hidden=hidden,
            init_reference=init_reference,
            references=references,
            proposals=proposals,
            enc_logits=enc_logits,
            enc_boxes_unact=enc_boxes_unact,
            topk=topk,
        )

    def _proposals(self, memory: Tensor, features: MultiScaleFeatures) -> tuple[Tensor, Tensor]:
        """One proposal per encoder position: its cell centre over the valid extent, width and
        height 0.05 * 2^level. Proposals touching the border (any coordinate outside (0.01,
        0.99)) and padded positions get inf and zeroed memory.

        Returns:
            (B, S, C) normalised features and (B, S, 4) proposals in logit space.
        """
        batch = memory.shape[0]
        padding = ~features.valid  # (B, S)
        boxes, start = [], 0
        for level, (height, width) in enumerate(features.shapes):
            level_padding = padding[:, start : start + height * width].view(batch, height, width)
            valid_h = (~level_padding[:, :, 0]).sum(1)  # (B,)
            valid_w = (~level_padding[:, 0, :]).sum(1)  # (B,)
            grid_y, grid_x = torch.meshgrid(
                torch.linspace(0, height - 1, height, dtype=torch.float32, device=memory.device),
                torch.linspace(0, width - 1, width, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.stack((grid_x, grid_y), -1)  # (H, W, 2)
            scale = torch.stack((valid_w, valid_h), -1).view(batch, 1, 1, 2)
            centres = (grid[None] + 0.5) / scale  # (B, H, W, 2)
            sizes = torch.full_like(centres, 0.05 * 2.0**level)
            boxes.append(torch.cat((centres, sizes), -1).view(batch, -1, 4))
            start += height * width
        proposals = torch.cat(boxes, 1)  # (B, S, 4)
        inside = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)  # (B, S, 1)
        proposals = torch.log(proposals / (1 - proposals))
        proposals = proposals.masked_fill(padding[..., None], float("inf"))
        proposals = proposals.masked_fill(~inside, float("inf"))
        kept = memory.masked_fill(padding[..., None], 0.0).masked_fill(~inside, 0.0)
        return self.enc_output_norm(self.enc_output(kept)), proposals
