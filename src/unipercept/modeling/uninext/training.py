"""What UNINEXT's losses see in training (``DDETRSegmUniDN.coco_forward``,
``models/ddetrs_dn.py:103-340``): every decoder layer's token logits, boxes and IoU logits, the
encoder's proposals, and each layer's masks for the queries a matcher picks; for the re-id
losses (``coco_forward_vis``, ``models/ddetrs_vid_dn.py:593-830``), both frames' embeddings.

Prompts are encoded as in training: category prompts as one caption whose category ``k`` is
marked by a *binary* row over its tokens (``instances.positive_map``, the training targets),
expressions as one pooled token. Denoising queries are not built (see
:class:`~unipercept.criterion.uninext_criterion.UninextCriterion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unipercept.modeling.uninext.captions import (
    MAX_QUERY_LEN,
    clean_string,
    encode_categories,
    tokenize,
)
from unipercept.modeling.uninext.masks import (
    mask_logits,
    memory_to_maps,
    reference_points_to_pixels,
)
from unipercept.modeling.uninext.model import Uninext, UninextOutput
from unipercept.structures import CategoryPrompt, ExpressionPrompt, ImageBatch, Prompt


@dataclass(frozen=True, eq=False)
class TrainingPrompts:
    """A batch's prompts as UNINEXT trains on them.

    Attributes:
        hidden: (B, L, Ct) the text encoder's output per image.
        mask: (B, L) int64 attention mask.
        pooled: expressions (one pooled token per image) rather than category captions.
        positive: per image, (K_b, T) bool: row ``k`` marks the tokens of prompt row ``k``
            (``T`` = L for captions, 1 for expressions). A category whose name fell beyond the
            256-token caption has an empty row.
    """

    hidden: Tensor
    mask: Tensor
    pooled: bool
    positive: list[Tensor]

    @property
    def token_mask(self) -> Tensor:
        """(B, T) bool: the tokens the class logits are scored on (every one for pooled)."""
        if self.pooled:
            return torch.ones(self.mask.shape[0], 1, dtype=torch.bool, device=self.mask.device)
        return self.mask > 0


def _category_rows(names: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """(1, L) ids, (1, L) mask and (K, L) binary positive rows of a category caption."""
    text = encode_categories(names)
    rows = torch.zeros(len(names), MAX_QUERY_LEN, dtype=torch.bool)
    for label, tokens in text.label_to_token.items():
        rows[label - 1, tokens] = True
    return text.input_ids, text.attention_mask, rows


def encode_training_prompts(model: Uninext, prompts: Sequence[Prompt]) -> TrainingPrompts:
    """Encodes one prompt per image with the model's text encoder.

    Raises:
        ValueError: prompts of mixed kinds, or of a kind UNINEXT's image training has no loss
            for (box or mask prompts: SOT and VOS train on video clips).
    """
    kinds = {type(p) for p in prompts}
    if len(kinds) != 1 or not kinds <= {CategoryPrompt, ExpressionPrompt}:
        names = sorted(k.__name__ for k in kinds)
        raise ValueError(
            "UNINEXT trains on one kind of prompt per batch, category names or expressions; "
            f"got {', '.join(names)}"
        )
    device = next(model.parameters()).device
    ids, masks, positive = [], [], []
    pooled = isinstance(prompts[0], ExpressionPrompt)
    cache: dict[tuple[str, ...], tuple[Tensor, Tensor, Tensor]] = {}
    for prompt in prompts:
        if pooled:
            input_ids, mask = tokenize([clean_string(prompt.text)])
            rows = torch.ones(1, 1, dtype=torch.bool)
        else:
            if prompt.names not in cache:
                cache[prompt.names] = _category_rows(prompt.names)
            input_ids, mask, rows = cache[prompt.names]
        ids.append(input_ids)
        masks.append(mask)
        positive.append(rows.to(device))
    input_ids, mask = torch.cat(ids).to(device), torch.cat(masks).to(device)
    return TrainingPrompts(
        hidden=model.encode_text(input_ids, mask), mask=mask, pooled=pooled, positive=positive
    )


@dataclass(frozen=True, eq=False)
class TrainingOutputs:
    """Every layer's predictions, as UNINEXT's criterion receives them.

    Attributes:
        logits: (D, B, Q, T) token logits of each decoder layer (T = 1 for expressions).
        boxes: (D, B, Q, 4) normalised cxcywh boxes of each layer.
        iou_logits: (D, B, Q, 1) predicted-IoU logits of each layer.
        enc_logits: (B, S, 1) the encoder's objectness of every position.
        enc_boxes: (B, S, 4) its proposals' boxes (sigmoid of the box logits; 1 where invalid).
        token_mask: (B, T) bool, the tokens the class loss covers.
        embeddings: (B, Q, E) re-id embeddings of the last layer, or None (not asked for); the
            re-id head reads detached decoder states, boxes and memory (UNINEXT's
            ``detach_reid``), so its loss trains the head alone.
        output: the forward pass (the last layer's outputs and the transformer's intermediates).
        model: the model, whose mask branch :meth:`mask_logits` runs.
    """

    logits: Tensor
    boxes: Tensor
    iou_logits: Tensor
    enc_logits: Tensor
    enc_boxes: Tensor
    token_mask: Tensor
    embeddings: Tensor | None
    output: UninextOutput
    model: Uninext
    _features: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def num_layers(self) -> int:
        return int(self.logits.shape[0])

    def mask_logits(self, layer: int, image: int, queries: Tensor) -> Tensor:
        """(N, H/4, W/4) mask logits of some queries of one image at a decoder layer, on the
        padded batch's grid: the layer's dynamic convs centred on its *input* reference
        (the previous layer's boxes, or the selected proposals for the first)."""
        t = self.output.transformer
        branch = self.model.mask_branch
        if "mask" not in self._features:  # the mask features of the batch, once for all layers
            maps = memory_to_maps(t.memory, self.output.features.shapes[:3])
            self._features["mask"] = branch.mask_head(maps[:3])  # (B, 8, H/8, W/8)
        previous = t.init_reference if layer == 0 else t.references[layer - 1]
        size = torch.as_tensor([self.output.image_sizes[image]], device=t.memory.device)
        centres = reference_points_to_pixels(previous[image : image + 1, queries, :2], size)
        logits = mask_logits(
            self._features["mask"][image : image + 1],
            branch.controller(t.hidden[layer][image : image + 1, queries]),
            centres,
            mask_stride=branch.mask_stride,
            out_stride=branch.out_stride,
        )  # (1, N, 1, H/4, W/4)
        return logits[0, :, 0]


def _forward(model: Uninext, images: ImageBatch, prompts: TrainingPrompts) -> UninextOutput:
    """The forward pass without masks (computed per matched query) or embeddings."""
    return model(
        images.tensor,
        ~images.valid,
        list(images.image_sizes),
        prompts.hidden,
        prompts.mask,
        pooled=prompts.pooled,
        with_masks=False,
        with_embeddings=False,
    )


def training_outputs(
    model: Uninext, images: ImageBatch, prompts: TrainingPrompts, *, with_embeddings: bool = False
) -> TrainingOutputs:
    """The model's forward pass with every layer's heads applied (masks on demand).

    Raises:
        ValueError: ``with_embeddings`` for a model without a re-id head (an image model).
    """
    if with_embeddings and model.reid_head is None:
        raise ValueError(
            "this UNINEXT model has no re-id head (an image-stage model): it cannot train "
            "association on pairs of frames"
        )
    output = _forward(model, images, prompts)
    t = output.transformer
    num_layers = t.hidden.shape[0]
    text = output.pooled_text if prompts.pooled else t.text
    logits = torch.stack([model.class_embed[i](t.hidden[i], text) for i in range(num_layers)])
    ious = torch.stack([model.iou_head[i](t.hidden[i]) for i in range(num_layers)])
    embeddings = None
    if with_embeddings:
        embeddings = model.reid_head(
            t.hidden[-1].detach(), t.references[-1], t.memory, output.features
        )
    return TrainingOutputs(
        logits=logits,
        boxes=t.references,
        iou_logits=ious,
        enc_logits=t.enc_logits,
        enc_boxes=t.enc_boxes_unact.sigmoid(),
        token_mask=prompts.token_mask,
        embeddings=embeddings,
        output=output,
        model=model,
    )


def reference_outputs(
    model: Uninext, images: ImageBatch, prompts: TrainingPrompts
) -> TrainingOutputs:
    """A clip's other frame, as UNINEXT's re-id losses use it: the detector without gradients
    (only the key frame has detection losses), its last layer, and the re-id embeddings (with
    gradients, for the re-id head).

    Raises:
        ValueError: a model without a re-id head.
    """
    if model.reid_head is None:
        raise ValueError(
            "this UNINEXT model has no re-id head (an image-stage model): it cannot train "
            "association on pairs of frames"
        )
    with torch.no_grad():
        output = _forward(model, images, prompts)
    t = output.transformer
    return TrainingOutputs(
        logits=output.logits[None],
        boxes=output.boxes[None],
        iou_logits=output.iou_logits[None],
        enc_logits=t.enc_logits,
        enc_boxes=t.enc_boxes_unact.sigmoid(),
        token_mask=prompts.token_mask,
        embeddings=model.reid_head(t.hidden[-1], t.references[-1], t.memory, output.features),
        output=output,
        model=model,
    )
