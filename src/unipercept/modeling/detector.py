"""Deformable DETR (Zhu et al., 2021): backbone, multi-scale neck, deformable encoder and
decoder, per-layer class and box heads. The core every unipercept task builds on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unipercept.modeling.backbone.base import Backbone
from unipercept.modeling.deformable_transformer import (
    DeformableDecoder,
    DeformableEncoder,
    inverse_sigmoid,
)
from unipercept.modeling.denoising import DenoisingQueries
from unipercept.modeling.heads import MLP, in_float32
from unipercept.modeling.neck import MultiScaleNeck
from unipercept.modeling.outputs import DecoderStates, DenoisingOutput, DetectionOutput
from unipercept.modeling.query_selection import StaticQueries, TwoStageQueries
from unipercept.structures import ImageBatch, Instances, normalize_boxes


def detection_heads(
    *, num_layers: int, hidden_dim: int, num_classes: int, box_refine: bool
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """Class and box heads, one per decoder layer: independent with box refinement, one shared
    pair otherwise (as Deformable DETR). Initialised for a 1% foreground prior and zero box
    deltas."""
    class_head = nn.Linear(hidden_dim, num_classes)
    nn.init.constant_(class_head.bias, -math.log((1 - 0.01) / 0.01))
    box_head = MLP(input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=4, num_layers=3)
    nn.init.constant_(box_head.layers[-1].weight, 0.0)
    nn.init.constant_(box_head.layers[-1].bias, 0.0)
    if box_refine:
        # Refined boxes start a little smaller than the reference (sigmoid(-2) of its logit).
        nn.init.constant_(box_head.layers[-1].bias[2:], -2.0)
        classes = nn.ModuleList(_clone(class_head) for _ in range(num_layers))
        boxes = nn.ModuleList(_clone(box_head) for _ in range(num_layers))
    else:
        classes = nn.ModuleList([class_head] * num_layers)
        boxes = nn.ModuleList([box_head] * num_layers)
    return classes, boxes


def _clone(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


class DeformableDETR(nn.Module):
    """Deformable DETR, with the two-stage and DINO options as flags.

    Args:
        backbone: images -> feature maps.
        neck: maps -> flattened multi-scale features.
        encoder: deformable encoder.
        decoder: deformable decoder (its ``look_forward_twice`` flag is DINO's).
        query_selection: :class:`StaticQueries` or :class:`TwoStageQueries` (two-stage; its
            ``mixed`` flag is DINO's mixed query selection).
        class_heads: one (B, Q, C) -> (B, Q, K) head per decoder layer.
        box_heads: one (B, Q, C) -> (B, Q, 4) box-delta head per decoder layer.
        box_refine: refine the reference boxes layer by layer with ``box_heads``.
        denoising: denoising queries added in training when targets are given (DINO).
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        neck: MultiScaleNeck,
        encoder: DeformableEncoder,
        decoder: DeformableDecoder,
        query_selection: StaticQueries | TwoStageQueries,
        class_heads: nn.ModuleList,
        box_heads: nn.ModuleList,
        box_refine: bool = False,
        denoising: DenoisingQueries | None = None,
    ) -> None:
        super().__init__()
        if len(class_heads) != len(decoder.layers) or len(box_heads) != len(decoder.layers):
            raise ValueError(
                f"need one class and one box head per decoder layer "
                f"({len(decoder.layers)}), got {len(class_heads)} and {len(box_heads)}"
            )
        if isinstance(query_selection, TwoStageQueries) and not box_refine:
            raise ValueError("two-stage query selection needs box_refine=True (as Deformable DETR)")
        self.backbone = backbone
        self.neck = neck
        self.encoder = encoder
        self.decoder = decoder
        self.query_selection = query_selection
        self.class_heads = class_heads
        self.box_heads = box_heads
        self.box_refine = box_refine
        self.denoising = denoising

    def forward(
        self, images: ImageBatch, targets: Sequence[Instances] | None = None
    ) -> DetectionOutput:
        """Args:
            images: padded, normalised images.
            targets: per image, ground truth with ``boxes`` (xyxy pixels of the resized image)
                and ``labels``; used only to build denoising queries in training.

        Returns:
            per-layer logits and normalised cxcywh boxes, and the two-stage proposals.
        """
        maps = self.backbone(images.tensor)
        features = self.neck(maps, images.valid)
        memory = self.encoder(features)  # (B, S, C)
        queries, proposals = self.query_selection(memory, features)
        num_denoising = 0
        if self.denoising is not None and self.training and targets is not None:
            labels = [t.labels for t in targets]
            boxes = [
                normalize_boxes(t.boxes, size)
                for t, size in zip(targets, images.image_sizes, strict=True)
            ]
            queries, num_denoising, query_index, target_index = self.denoising(
                queries, labels, boxes
            )
        states = self.decoder(
            queries, memory, features, self.box_heads if self.box_refine else None
        )
        logits, boxes = self._predict(states)  # (L, B, D+Q, K), (L, B, D+Q, 4)
        denoising = None
        if num_denoising:
            denoising = DenoisingOutput(
                logits=logits[:, :, :num_denoising],
                boxes=boxes[:, :, :num_denoising],
                query_index=query_index,
                target_index=target_index,
            )
        return DetectionOutput(
            logits=logits[:, :, num_denoising:],
            boxes=boxes[:, :, num_denoising:],
            hidden_states=states.hidden_states[:, :, num_denoising:],
            encoder=proposals,
            denoising=denoising,
        )

    def _predict(self, states: DecoderStates) -> tuple[Tensor, Tensor]:
        logits = torch.stack(
            [
                in_float32(head, h)
                for head, h in zip(self.class_heads, states.hidden_states, strict=True)
            ]
        )
        if states.refined_boxes is not None:
            return logits, states.refined_boxes
        boxes = []
        for layer, (head, hidden) in enumerate(
            zip(self.box_heads, states.hidden_states, strict=True)
        ):
            delta = in_float32(head, hidden)  # (B, Q, 4)
            reference = inverse_sigmoid(states.reference_points[layer])
            if reference.shape[-1] == 4:
                boxes.append((delta + reference).sigmoid())
            else:
                boxes.append(torch.cat((delta[..., :2] + reference, delta[..., 2:]), -1).sigmoid())
        return logits, torch.stack(boxes)
