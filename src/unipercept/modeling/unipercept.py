"""UniPercept: Deformable DETR told by a prompt what to look for (UNINEXT's object discovery
and retrieval).

Images go through the backbone and neck; the prompt through the encoder its kind selects.
Bi-XAtt fusion lets both see each other before the deformable encoder; the decoder's queries
are then scored against the prompt (S = F_ins . W^T) instead of a fixed class list, so the
same weights detect any category names, a referring expression or an annotated target.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from unipercept.modeling.backbone.base import Backbone
from unipercept.modeling.deformable_transformer import (
    DeformableDecoder,
    DeformableEncoder,
    inverse_sigmoid,
)
from unipercept.modeling.fusion import BiXAttnFusion
from unipercept.modeling.heads import in_float32
from unipercept.modeling.neck import MultiScaleNeck
from unipercept.modeling.outputs import DecoderOutput, PromptEmbedding
from unipercept.modeling.query_selection import StaticQueries, TwoStageQueries
from unipercept.modeling.rescorer import ReferringRescorer
from unipercept.modeling.unipercept_heads import UniPerceptHeads
from unipercept.structures import ImageBatch, Prompt

if TYPE_CHECKING:
    from unipercept.data.preprocess import ImagePreprocessor


class UniPercept(nn.Module):
    """The prompt-driven instance perception model.

    Args:
        backbone: images -> maps. When its first map has stride 4, that map feeds the mask
            branch (stride-4 masks) and the rest feed the neck.
        neck: maps -> flattened multi-scale features.
        prompt_encoders: one encoder per prompt kind ("category", "expression",
            "annotation"); the prompt's ``kind`` picks it.
        fusion: Bi-XAtt early fusion, or None.
        encoder, decoder: the deformable transformer.
        query_selection: static or two-stage queries (two-stage scores a single objectness).
        heads: retrieval, box, quality, mask and embedding heads.
        box_refine: iterative box refinement with the box heads.
        prompt_conditioned_queries: add a projection of the prompt's mean row of W to every
            query's content (static queries are the default).
        rescorer: re-scores the last layer's queries for expression prompts (their
            embedding's ``kind`` is ``"expression"``), seeing all queries' boxes and the words
            together; None: the retrieval head's scores stand.
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        neck: MultiScaleNeck,
        prompt_encoders: Mapping[str, nn.Module],
        fusion: BiXAttnFusion | None,
        encoder: DeformableEncoder,
        decoder: DeformableDecoder,
        query_selection: StaticQueries | TwoStageQueries,
        heads: UniPerceptHeads,
        box_refine: bool = True,
        prompt_conditioned_queries: bool = False,
        rescorer: ReferringRescorer | None = None,
    ) -> None:
        super().__init__()
        if isinstance(query_selection, TwoStageQueries) and not box_refine:
            raise ValueError("two-stage query selection needs box_refine=True")
        self.uses_stride4 = backbone.out_strides[0] == 4
        if self.uses_stride4 != (heads.mask_branch.lateral is not None):
            raise ValueError(
                "the mask branch needs a stride-4 lateral map exactly when the "
                f"backbone's first stride is 4 (strides {backbone.out_strides})"
            )
        self.backbone = backbone
        self.neck = neck
        self.prompt_encoders = nn.ModuleDict(dict(prompt_encoders))
        self.fusion = fusion
        self.encoder = encoder
        self.decoder = decoder
        self.query_selection = query_selection
        self.heads = heads
        self.box_refine = box_refine
        width = neck.hidden_dim
        self.query_conditioning = nn.Linear(width, width) if prompt_conditioned_queries else None
        self.rescorer = rescorer
        # Set by from_pretrained: the resolved config, the inference resolution, the folder.
        self.config: dict[str, Any] | None = None
        self.preprocess_settings: dict[str, int] = {}
        # The model's own task options, plain data per task name (unipercept.tasks.settings).
        self.task_settings: dict[str, dict[str, Any]] = {}
        self.pretrained_path: Path | None = None

    def encode_prompts(
        self, prompts: Sequence[Prompt], images: ImageBatch | None = None
    ) -> PromptEmbedding:
        """Encodes a batch of prompts of one kind (a video encodes its prompt once)."""
        if not prompts:
            raise ValueError("prompts is empty: give one prompt per image")
        kinds = {p.kind for p in prompts}
        if len(kinds) != 1:
            raise ValueError(f"a batch holds one kind of prompt, got {sorted(kinds)}")
        (kind,) = kinds
        if kind not in self.prompt_encoders:
            raise ValueError(
                f"this model has no encoder for {kind!r} prompts; it has "
                f"{sorted(self.prompt_encoders)}"
            )
        encoder = self.prompt_encoders[kind]
        if getattr(encoder, "uses_neck", False):  # template tokens share the image projections
            return encoder(prompts, images, neck=self.neck)
        return encoder(prompts, images)

    def forward(
        self, images: ImageBatch, prompts: Sequence[Prompt] | PromptEmbedding
    ) -> DecoderOutput:
        """Args:
            images: B padded, normalised images.
            prompts: B prompts of one kind, or their embedding from :meth:`encode_prompts`.

        Returns:
            per-layer scores against the prompt rows, boxes, qualities and mask kernels, with
            the shared mask features and the last layer's embeddings.
        """
        embedding = (
            prompts
            if isinstance(prompts, PromptEmbedding)
            else self.encode_prompts(prompts, images)
        )
        if embedding.tokens.shape[0] != len(images):
            raise ValueError(f"{embedding.tokens.shape[0]} prompts for {len(images)} images")
        maps = self.backbone(images.tensor)
        lateral = maps[0] if self.uses_stride4 else None
        features = self.neck(maps[1:] if self.uses_stride4 else maps, images.valid)
        prompt_tokens = embedding.tokens
        if self.fusion is not None:
            tokens, prompt_tokens = self.fusion(
                features.tokens, features.valid, embedding.tokens, embedding.valid
            )
            features = dataclasses.replace(features, tokens=tokens)
        classes = embedding.class_embeddings(prompt_tokens)  # (B, K, C), W after fusion
        memory = self.encoder(features)  # (B, S, C)
        queries, proposals = self.query_selection(memory, features)
        if self.query_conditioning is not None:
            mean_row = (classes * embedding.class_valid[..., None]).sum(
                1
            ) / embedding.class_valid.sum(1, keepdim=True).clamp(min=1)  # (B, C)
            queries = dataclasses.replace(
                queries, content=queries.content + self.query_conditioning(mean_row)[:, None]
            )
        states = self.decoder(
            queries, memory, features, self.heads.box if self.box_refine else None
        )
        hidden = states.hidden_states  # (L, B, Q, C)
        logits = torch.stack(
            [
                in_float32(head, h, classes)
                for head, h in zip(self.heads.retrieval, hidden, strict=True)
            ]
        )
        padded = ~embedding.class_valid[None, :, None, :]  # padded prompt rows never score
        logits = logits.masked_fill(padded, torch.finfo(logits.dtype).min)
        boxes = (
            states.refined_boxes
            if states.refined_boxes is not None
            else self._boxes(states.hidden_states, states.reference_points)
        )
        quality = torch.stack(
            [
                in_float32(head, h)[..., 0]
                for head, h in zip(self.heads.quality, hidden, strict=True)
            ]
        )
        if self.rescorer is not None and embedding.kind == "expression" and logits.shape[-1] == 1:
            rescored = in_float32(
                self.rescorer,
                hidden[-1],
                boxes[-1],
                logits[-1, ..., 0],
                quality[-1],
                prompt_tokens,
                embedding.valid,
            )
            logits = torch.cat((logits[:-1], rescored[None, ..., None]))
        image_sizes = torch.as_tensor(images.image_sizes, device=hidden.device)
        return DecoderOutput(
            logits=logits,
            boxes=boxes,
            quality=quality,
            mask_kernels=self.heads.controller(hidden),
            mask_features=self.heads.mask_branch(features.maps[0], lateral),
            mask_stride=self.heads.mask_branch.stride,
            embeddings=self.heads.embedding(hidden[-1]),
            hidden_states=hidden,
            class_valid=embedding.class_valid,
            image_sizes=image_sizes,
            encoder=proposals,
            prompt_tokens=prompt_tokens,
            prompt_valid=embedding.valid,
        )

    def _boxes(self, hidden: Tensor, references: tuple[Tensor, ...]) -> Tensor:
        boxes = []
        for head, state, reference in zip(self.heads.box, hidden, references, strict=False):
            delta, base = in_float32(head, state), inverse_sigmoid(reference)
            if base.shape[-1] == 4:
                boxes.append((delta + base).sigmoid())
            else:
                boxes.append(torch.cat((delta[..., :2] + base, delta[..., 2:]), -1).sigmoid())
        return torch.stack(boxes)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute encoder and decoder activations in the backward pass (less memory, about
        a third more compute)."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    def default_preprocess(self) -> ImagePreprocessor:
        """The preprocessor at the resolution the model was saved with (800/1333 otherwise)."""
        from unipercept.data.preprocess import ImagePreprocessor

        return ImagePreprocessor(**self.preprocess_settings)

    def save_pretrained(self, folder: str | os.PathLike[str], **options: Any) -> Path:
        """Writes this model as a folder of safetensors weights and its resolved config; see
        :func:`unipercept.modeling.pretrained.save_pretrained` for ``options``."""
        from unipercept.modeling.pretrained import save_pretrained

        return save_pretrained(self, folder, **options)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], *, device: str | torch.device | None = None
    ) -> UniPercept:
        """A bundled model by name (``"unipercept-tiny"``) or a folder from
        :meth:`save_pretrained`, in eval mode; weights are never unpickled."""
        from unipercept.modeling.pretrained import from_pretrained

        return from_pretrained(name_or_path, device=device)

    def freeze_detector(self) -> None:
        """Mask Frozen-DETR mode: only the mask branch, its controller and the quality heads
        train; everything else keeps its weights (and batch-norm-free layers stay as they are)."""
        trainable = {id(p) for p in self.heads.mask_branch_parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in trainable)
