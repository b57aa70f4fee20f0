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
class PromptEmbedding:
    """A batch of encoded prompts: tokens for early fusion, and how to pool them into W.

    Attributes:
        tokens: (B, L, C) prompt tokens in the model's width.
        valid: (B, L) bool, True on real tokens (False on padding).
        pooling: (B, K, L) weights turning tokens into the K rows of W (each row sums to 1
            over its tokens): one row per category name, or one row averaging all tokens for
            an expression or an annotation.
        class_valid: (B, K) bool, False for padding rows when prompts of a batch have
            different numbers of categories.
        kind: the prompts' kind (``"category"``, ``"expression"``, ``"annotation"``), or None
            where the maker did not say; an expression's is what turns on the model's
            referring re-scorer.
    """

    tokens: Tensor
    valid: Tensor
    pooling: Tensor
    class_valid: Tensor
    kind: str | None = None

    def class_embeddings(self, tokens: Tensor | None = None) -> Tensor:
        """W: (B, K, C), pooled from ``tokens`` (default: this embedding's own tokens; pass
        the fused tokens to pool those instead)."""
        return self.pooling @ (self.tokens if tokens is None else tokens)

    def replace_tokens(self, tokens: Tensor) -> PromptEmbedding:
        return PromptEmbedding(
            tokens=tokens,
            valid=self.valid,
            pooling=self.pooling,
            class_valid=self.class_valid,
            kind=self.kind,
        )


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


@dataclass(frozen=True, eq=False)
class DecoderOutput:
    """Predictions of the prompt-driven model for a batch.

    Attributes:
        logits: (num_layers, B, Q, K) retrieval scores S = F_ins . W^T (one column per prompt
            row: category name, or the single expression / annotation row).
        boxes: (num_layers, B, Q, 4) normalised cxcywh boxes.
        quality: (num_layers, B, Q) logits of the predicted IoU of each box (or mask) with its
            object.
        mask_kernels: (num_layers, B, Q, P) dynamic convolution parameters of each query.
        mask_features: (B, D, h, w) shared mask features of the padded batch.
        mask_stride: input pixels per mask-feature pixel (4 or 8).
        embeddings: (B, Q, E) association embeddings of the last layer.
        hidden_states: (num_layers, B, Q, C).
        class_valid: (B, K) bool, False on padded prompt rows.
        image_sizes: (B, 2) int64 (height, width) of each image inside the padded input.
        encoder: two-stage proposals, or None.
        prompt_tokens: (B, L, C) the prompt's tokens after early fusion (what a referring
            re-scorer reads), or None.
        prompt_valid: (B, L) bool, False on padded prompt tokens, or None.
    """

    logits: Tensor
    boxes: Tensor
    quality: Tensor
    mask_kernels: Tensor
    mask_features: Tensor
    mask_stride: int
    embeddings: Tensor
    hidden_states: Tensor
    class_valid: Tensor
    image_sizes: Tensor
    encoder: EncoderProposals | None = None
    prompt_tokens: Tensor | None = None
    prompt_valid: Tensor | None = None

    def mask_logits(self, layer: int, batch_index: Tensor, query_index: Tensor) -> Tensor:
        """(M, h, w) mask logits of the M queries ``(batch_index[i], query_index[i])`` at
        decoder layer ``layer``, on the padded batch's stride-``mask_stride`` grid."""
        from unipercept.modeling.heads import in_float32
        from unipercept.modeling.mask_head import dynamic_mask_logits

        # In float32 under autocast, like the box heads: the dynamic convolutions are small,
        # and mask borders follow the logits' sign.
        return in_float32(
            dynamic_mask_logits,
            self.mask_features,
            batch_index,
            self.mask_kernels[layer][batch_index, query_index],
            self.boxes[layer][batch_index, query_index, :2],
            self.image_sizes,
            self.mask_stride,
        )
