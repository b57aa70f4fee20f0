"""What UNINEXT's tasks share: prompts encoded as UNINEXT feeds its text encoder, the model run
on a preprocessed batch, and results mapped back to the frame the user gave.

The model (:class:`~unipercept.modeling.uninext.model.Uninext`) only computes raw outputs; these
helpers hold the glue UNINEXT's ``uninext_img.py`` / ``uninext_vid.py`` wrap around it: the
detection caption and its class map, ``clean_string`` for expressions, the annotation prompt at
input resolution (as detectron2's dataset mapper transforms it), and the way boxes and masks
return to the original pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from unipercept.modeling.uninext.captions import clean_string, encode_categories, tokenize
from unipercept.modeling.uninext.model import Uninext, UninextOutput
from unipercept.modeling.uninext.postprocess import (
    binary_masks,
    box_cxcywh_to_xyxy,
    nms_per_best_class,
    od_logits,
)
from unipercept.structures import (
    AnnotationPrompt,
    CategoryPrompt,
    ExpressionPrompt,
    ImageBatch,
    boxes_to_masks,
)


@dataclass(frozen=True, eq=False)
class UninextText:
    """A text prompt encoded once, for many images or a whole video.

    Attributes:
        hidden: (1, L, Ct) the text encoder's output (L = 256 tokens).
        mask: (1, L) int64 attention mask, 1 on tokens (the fusion block relies on the int64
            type, see :func:`~unipercept.modeling.uninext.fusion.uninext_text_bias`).
        positive_map: (K, L) float per-category token weights (category prompts: a class logit
            is the mean of its tokens' logits), or None for an expression, whose single class
            is scored against the pooled prompt.
        names: the category names the labels index, or ``()`` for an expression.
    """

    hidden: Tensor
    mask: Tensor
    positive_map: Tensor | None
    names: tuple[str, ...] = ()

    @property
    def pooled(self) -> bool:
        """Whether queries are scored against the pooled prompt (expressions)."""
        return self.positive_map is None


def encode_category_text(model: Uninext, prompt: CategoryPrompt) -> UninextText:
    """UNINEXT's detection prompt: the cleaned names joined by ". " and each category's tokens
    (``create_queries_and_maps``), encoded by the model's text encoder.

    Raises:
        ValueError: not a :class:`CategoryPrompt`.
    """
    if not isinstance(prompt, CategoryPrompt):
        raise ValueError(f"this task needs category names, got a {type(prompt).__name__}")
    device = next(model.parameters()).device
    text = encode_categories(prompt.names)
    input_ids, mask = text.input_ids.to(device), text.attention_mask.to(device)
    return UninextText(
        hidden=model.encode_text(input_ids, mask),
        mask=mask,
        positive_map=text.positive_map.to(device),
        names=tuple(prompt.names),
    )


def encode_expression_text(model: Uninext, prompt: ExpressionPrompt) -> UninextText:
    """UNINEXT's grounding prompt: the expression through ``clean_string``, encoded.

    Raises:
        ValueError: not an :class:`ExpressionPrompt`.
    """
    if not isinstance(prompt, ExpressionPrompt):
        raise ValueError(f"this task needs an expression, got a {type(prompt).__name__}")
    device = next(model.parameters()).device
    input_ids, mask = tokenize([clean_string(prompt.text)])
    input_ids, mask = input_ids.to(device), mask.to(device)
    return UninextText(hidden=model.encode_text(input_ids, mask), mask=mask, positive_map=None)


def run_model(
    model: Uninext,
    images: ImageBatch,
    hidden: Tensor,
    mask: Tensor,
    *,
    pooled: bool,
    with_masks: bool,
    with_embeddings: bool = False,
) -> UninextOutput:
    """The model on a preprocessed batch.

    Args:
        images: the batch from :class:`~unipercept.modeling.uninext.preprocess.UninextPreprocessor`.
        hidden: (1, L, Ct) one prompt for every image, or (B, L, Ct) one per image (templates).
        mask: (1, L) or (B, L) its mask (int64 for text, bool for templates).
        pooled, with_masks, with_embeddings: as :meth:`Uninext.forward`.
    """
    batch_size = images.tensor.shape[0]
    output = model(
        images.tensor,
        ~images.valid,
        list(images.image_sizes),
        hidden.expand(batch_size, -1, -1),
        mask.expand(batch_size, -1),
        pooled=pooled,
        with_masks=with_masks,
        with_embeddings=with_embeddings,
    )
    if output.logits.dtype == torch.float32:
        return output
    # A bf16 / fp16 model: results are scored and reported in float32.
    return dataclasses.replace(
        output,
        logits=output.logits.float(),
        boxes=output.boxes.float(),
        iou_logits=output.iou_logits.float(),
        embeddings=None if output.embeddings is None else output.embeddings.float(),
    )


def class_logits(output: UninextOutput, text: UninextText) -> Tensor:
    """(B, Q, K) per-class logits: token logits averaged per category, or the pooled logit."""
    if text.positive_map is None:
        return output.logits  # (B, Q, 1)
    return od_logits(output.logits, text.positive_map)


def box_to_input(box_xyxy: Tensor, *, orig_size: tuple[int, int], image_size: tuple[int, int]):
    """A prompt box in original pixels to input pixels, as detectron2's ``ResizeTransform``
    scales annotation boxes (float64 numpy, ``x * new_w / w``) before they become float32.

    Returns:
        (4,) float32 on the box's device.
    """
    scale = torch.tensor(
        [image_size[1] / orig_size[1], image_size[0] / orig_size[0]] * 2, dtype=torch.float64
    )
    return (box_xyxy.double().cpu() * scale).float().to(box_xyxy.device)


def prompt_mask_to_input(
    prompt: AnnotationPrompt, *, image_size: tuple[int, int], padded_size: tuple[int, int]
) -> Tensor:
    """The target's mask at input resolution, as a VOS template's prior.

    detectron2's dataset mapper resizes annotation masks with PIL's nearest filter; UNINEXT then
    pads them with zeros to the padded image (``prepare_targets_test``; it pads to a multiple
    of 32 and asserts that equals the image tensor, which holds for backbones that pad to 32;
    here the mask is padded to the image tensor whatever the backbone). A box-only prompt
    gives its rectangle.

    Returns:
        (H_pad, W_pad) float 0/1 mask.
    """
    mask = prompt.mask
    if mask is None:
        mask = boxes_to_masks(prompt.box[None], prompt.image_size)[0]
    array = mask.cpu().numpy().astype(np.uint8)  # (H, W) 0/1
    resized = Image.fromarray(array).resize((image_size[1], image_size[0]), Image.NEAREST)
    padded = torch.zeros(padded_size)
    padded[: image_size[0], : image_size[1]] = torch.from_numpy(np.asarray(resized).copy())
    return padded


def boxes_to_original(boxes_cxcywh: Tensor, orig_size: tuple[int, int]) -> Tensor:
    """Normalised cxcywh boxes to xyxy original pixels, unclipped, in UNINEXT's video order:
    the coordinates scaled first, then converted (``inference_mot``, ``inference_rvos``).

    Args:
        boxes_cxcywh: (N, 4) normalised (relative to the valid input, hence to the original).
        orig_size: (H, W) of the original frame.
    """
    height, width = orig_size
    scale = boxes_cxcywh.new_tensor([width, height, width, height])
    return box_cxcywh_to_xyxy(boxes_cxcywh * scale)  # (N, 4)


def masks_to_original(
    mask_logits: Tensor, *, image_size: tuple[int, int], orig_size: tuple[int, int]
) -> Tensor:
    """Binary masks at the original size: UNINEXT's x4 bilinear upsampling of the logits,
    sigmoid > 0.5 cropped to the valid input, then nearest resize.

    Args:
        mask_logits: (N, 1, H/4, W/4) logits of the selected queries.

    Returns:
        (N, H, W) bool.
    """
    if mask_logits.shape[0] == 0:
        return torch.zeros((0, *orig_size), dtype=torch.bool, device=mask_logits.device)
    masks = binary_masks(mask_logits, image_size=image_size)  # (N, h, w)
    resized = F.interpolate(masks[:, None].float(), size=tuple(orig_size), mode="nearest")
    return resized[:, 0] > 0.5


def select_for_tracking(scores: Tensor, boxes_cxcywh: Tensor, *, threshold: float, nms_iou: float):
    """The queries a video frame passes to the tracker (``inference_mot`` / ``inference_vis``):
    those whose best class score is above ``threshold``, after NMS within each best class; the
    single best query when none is.

    Args:
        scores: (Q, K) per-class scores.
        boxes_cxcywh: (Q, 4) normalised boxes.
        threshold: UNINEXT's ``INFERENCE_SELECT_THRES`` (0.1).
        nms_iou: 0.7 (MOT) or 0.9 (VIS).

    Returns:
        (N,) int64 query indices by decreasing best score (N >= 1).
    """
    best = scores.max(dim=1).values  # (Q,)
    candidates = torch.nonzero(best > threshold).flatten()  # (C,)
    if candidates.numel() == 0:
        return best.argmax().view(1)
    keep = nms_per_best_class(scores[candidates], boxes_cxcywh[candidates], nms_iou)
    return candidates[keep]
