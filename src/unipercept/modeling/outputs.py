"""Typed values passed between the parts of the detector (no string-keyed dicts)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True, eq=False)
class MultiScaleFeatures:
    """Projected feature maps of all levels, flattened level by level for the encoder.

    Attributes:
        tokens: (B, S, C) features, S = sum of H_l * W_l.
        position: (B, S, C) sine position encoding plus the level embedding.
        valid: (B, S) bool, True on positions inside the image (False on padding).
        spatial_shapes: (L, 2) int64 ``(H_l, W_l)`` on the features' device.
        level_start_index: (L,) int64 offset of each level in S.
        valid_ratios: (B, L, 2) fraction ``(w, h)`` of each level covered by the image.
        shapes: the same sizes as ``spatial_shapes`` on the host, for Python loops.
        maps: L projected maps (B, C, H_l, W_l), finest first (for mask heads).
    """

    tokens: Tensor
    position: Tensor
    valid: Tensor
    spatial_shapes: Tensor
    level_start_index: Tensor
    valid_ratios: Tensor
    shapes: tuple[tuple[int, int], ...]
    maps: tuple[Tensor, ...]


@dataclass(frozen=True, eq=False)
class Queries:
    """What the decoder starts from.

    Attributes:
        content: (B, Q, C) content embeddings (the decoder's input states).
        position: (B, Q, C) positional embeddings added to queries and keys.
        reference_points: (B, Q, 2) point or (B, Q, 4) cxcywh box, in [0, 1].
        self_attention_mask: (Q, Q) bool, True where query i must not attend to query j
            (denoising groups), or None.
    """

    content: Tensor
    position: Tensor
    reference_points: Tensor
    self_attention_mask: Tensor | None = None


@dataclass(frozen=True, eq=False)
class EncoderProposals:
    """Two-stage proposals: a class-agnostic detection at every encoder position.

    Attributes:
        logits: (B, S, K) scores of the encoder head (the first is the objectness used to pick
            queries).
        boxes: (B, S, 4) normalised cxcywh boxes.
    """

    logits: Tensor
    boxes: Tensor


@dataclass(frozen=True, eq=False)
class DecoderStates:
    """What the decoder layers produced.

    Attributes:
        hidden_states: (num_layers, B, Q, C) output of every layer.
        reference_points: num_layers + 1 tensors (B, Q, 2 | 4): the reference given to each
            layer (index l) and the one after the last layer, detached as the layers see them
            (points become boxes after the first refinement, so they do not stack).
        refined_boxes: (num_layers, B, Q, 4) normalised cxcywh boxes predicted by the box heads
            inside the decoder (iterative refinement), or None without refinement.
    """

    hidden_states: Tensor
    reference_points: tuple[Tensor, ...]
    refined_boxes: Tensor | None


@dataclass(frozen=True, eq=False)
class DenoisingOutput:
    """Predictions for the denoising queries of a training step, and how they map to targets.

    Attributes:
        logits: (num_layers, B, D, K) class logits of the D denoising queries.
        boxes: (num_layers, B, D, 4) normalised cxcywh boxes.
        query_index: per image, (M,) int64 index of denoising queries with a target...
        target_index: ...and (M,) int64 index of the target each one reconstructs.
    """

    logits: Tensor
    boxes: Tensor
    query_index: list[Tensor]
    target_index: list[Tensor]


@dataclass(frozen=True, eq=False)
class DetectionOutput:
    """Predictions of the detector for a batch.

    Attributes:
        logits: (num_layers, B, Q, K) class logits of every decoder layer (the last is the
            answer; the others feed auxiliary losses).
        boxes: (num_layers, B, Q, 4) normalised cxcywh boxes of every layer.
        hidden_states: (num_layers, B, Q, C) decoder states, for further heads.
        encoder: two-stage proposals, or None.
        denoising: predictions of the denoising queries (training with denoising only).
    """

    logits: Tensor
    boxes: Tensor
    hidden_states: Tensor
    encoder: EncoderProposals | None = None
    denoising: DenoisingOutput | None = None
