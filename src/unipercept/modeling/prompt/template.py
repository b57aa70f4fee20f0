"""Annotation prompts as UNINEXT encodes them: a template crop whose features stand in for
prompt tokens.

The target of a box (SOT) or mask (VOS) is cropped from its frame with context; a fourth channel
marks it (the box rectangle or the mask). A reference backbone (its first convolution extended
to four channels) encodes the crop, the *main model's* neck projections map its levels to the
model width (one set of projections for images and templates, as UNINEXT's shared
``input_proj``), a fuser sums the levels at the finest one, and a linear layer adjusts every
position into a prompt token. The tokens go through early fusion like a caption's, and W is
their mean (UNINEXT ``models/ddetrs_vid_dn.py`` ``coco_inference_ref``; the full-size port is
:mod:`unipercept.modeling.uninext.template`).

Several templates of one target (VOS's first frame and latest answer, SOT's online update) are
one prompt: :func:`concat_templates` joins their tokens. Attention and the mean are invariant
to repeating a token set, so a template joined with itself answers as the template alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.modeling.backbone.base import Backbone
from unipercept.modeling.neck import MultiScaleNeck
from unipercept.modeling.outputs import PromptEmbedding
from unipercept.modeling.prompt.annotation import IMAGENET_MEAN, IMAGENET_STD, add_prior_channel
from unipercept.modeling.uninext.template import SotFuser, project_features
from unipercept.ops import roi_align
from unipercept.structures import AnnotationPrompt, boxes_to_masks


def template_region(box: Tensor, context_factor: float) -> Tensor:
    """(4,) xyxy square of side ``context_factor * sqrt(w * h)`` centred on ``box``."""
    x1, y1, x2, y2 = box.tolist()
    side = context_factor * math.sqrt(max((x2 - x1) * (y2 - y1), 1.0))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return torch.tensor([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def crop_template(
    prompt: AnnotationPrompt,
    *,
    size: int,
    context_factor: float,
    pixel_mean: Tensor,
    pixel_std: Tensor,
) -> tuple[Tensor, Tensor]:
    """The 4-channel template of one annotation.

    RGB is normalised before cropping, so whatever lies outside the frame is zero (the mean
    colour), as UNINEXT pads its templates. The crop averages the pixels under each output
    pixel (RoIAlign with an adaptive sampling ratio), so a large frame is not aliased.

    Args:
        prompt: the annotated frame and its box (and mask, the prior when given).
        size: the template side S.
        context_factor: the crop side over ``sqrt(w * h)`` of the box.
        pixel_mean, pixel_std: (3, 1, 1) on the device to crop on.

    Returns:
        ``(template, padding)``: (4, S, S) normalised RGB plus the prior channel (1 on the
        target), and (S, S) bool, True where the crop lies outside the frame.
    """
    device = pixel_mean.device
    frame = prompt.frame.to(device)
    rgb = frame.float() / 255.0 if not frame.is_floating_point() else frame.float()
    rgb = (rgb - pixel_mean) / pixel_std  # (3, H, W)
    if prompt.mask is not None:
        prior = prompt.mask.to(device).float()[None]  # (1, H, W)
    else:
        prior = boxes_to_masks(prompt.box[None].to(device), prompt.image_size).float()
    region = template_region(prompt.box, context_factor).to(device)
    template = roi_align(
        torch.cat([rgb, prior])[None], [region[None]], size, sampling_ratio=0, aligned=True
    )[0]  # (4, S, S)
    # Output pixel centres in frame coordinates; outside [0, W] x [0, H] is padding.
    height, width = prompt.image_size
    steps = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    xs = region[0] + steps * (region[2] - region[0])
    ys = region[1] + steps * (region[3] - region[1])
    outside_x = (xs < 0) | (xs > width)
    outside_y = (ys < 0) | (ys > height)
    padding = outside_y[:, None] | outside_x[None, :]  # (S, S)
    return template, padding


def template_level_sizes(crop_size: int, strides: Sequence[int]) -> tuple[int, ...]:
    """Sides of the fuser's four levels for a template of side ``crop_size``: the last three
    backbone maps (padded convolutions give ``ceil(S / stride)``), then stride-2 extra levels."""
    sizes = [math.ceil(crop_size / stride) for stride in sorted(strides)[-SotFuser.num_levels :]]
    while len(sizes) < SotFuser.num_levels:
        sizes.append(math.ceil(sizes[-1] / 2))
    return tuple(sizes)


class TemplatePromptEncoder(nn.Module):
    """Encodes annotation prompts into template tokens (UNINEXT's template path at any width).

    Args:
        backbone: the reference backbone (3-channel; its first convolution gains the prior
            channel). Its maps must match the image backbone's channels, since the image neck's
            projections serve both.
        hidden_dim: model width C.
        crop_size: the template side S; every level's side must divide the finest's (true
            for multiples of the backbone's coarsest stride).
        context_factor: the crop side over ``sqrt(w * h)`` of the target's box.
    """

    kind = "annotation"
    # UniPercept passes its neck to forward().
    uses_neck = True

    def __init__(
        self,
        *,
        backbone: Backbone,
        hidden_dim: int = 256,
        crop_size: int = 128,
        context_factor: float = 2.0,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if context_factor < 1:
            raise ValueError(f"context_factor must be >= 1, got {context_factor}")
        sizes = template_level_sizes(crop_size, backbone.out_strides)
        if any(sizes[0] % size for size in sizes):
            raise ValueError(
                f"crop_size {crop_size} gives template levels of sizes {sizes}; the fuser needs "
                "each to divide the finest (e.g. a multiple of the backbone's coarsest stride "
                f"{max(backbone.out_strides)})"
            )
        self.backbone = add_prior_channel(backbone)
        self.crop_size = crop_size
        self.context_factor = context_factor
        self.fuser = SotFuser(in_channels=hidden_dim, channels=hidden_dim)
        self.adjust = nn.Linear(hidden_dim, hidden_dim)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    def crops(self, prompts: Sequence[AnnotationPrompt]) -> tuple[Tensor, Tensor]:
        """(B, 4, S, S) templates and (B, S, S) bool padding, one per prompt."""
        pairs = [
            crop_template(
                prompt,
                size=self.crop_size,
                context_factor=self.context_factor,
                pixel_mean=self.pixel_mean,
                pixel_std=self.pixel_std,
            )
            for prompt in prompts
        ]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def forward(
        self,
        prompts: Sequence[AnnotationPrompt],
        images: object = None,
        *,
        neck: MultiScaleNeck,
    ) -> PromptEmbedding:
        """Args:
            prompts: B annotations (one per tracked object).
            images: unused (the signature of every prompt encoder).
            neck: the image model's neck, whose per-level projections serve the template.

        Returns:
            one token per position of the finest level (valid where the crop is inside the
            frame); W is their mean.
        """
        if not prompts:
            raise ValueError("prompts is empty: give one AnnotationPrompt per object")
        if neck.num_levels != SotFuser.num_levels:
            raise ValueError(
                f"the template fuser sums {SotFuser.num_levels} levels; the neck has "
                f"{neck.num_levels}"
            )
        templates, padding = self.crops(prompts)
        maps = list(self.backbone(templates))
        # A stride-4 map (the image model's mask lateral) has no neck projection.
        maps = maps[len(maps) - neck.num_backbone_levels :]
        fused = self.fuser(project_features(maps, neck.input_proj))  # (B, C, h, w)
        tokens = self.adjust(fused.flatten(2).transpose(1, 2))  # (B, h*w, C)
        # A token is padding when most of the pixels it covers are.
        outside = F.adaptive_avg_pool2d(padding[:, None].float(), fused.shape[-2:])[:, 0]
        valid = (outside <= 0.5).flatten(1)  # (B, h*w)
        valid[~valid.any(1)] = True  # a target at the frame's corner keeps every token
        return template_embedding(tokens, valid)


def template_embedding(tokens: Tensor, valid: Tensor) -> PromptEmbedding:
    """One row of W per prompt, the mean of its valid tokens."""
    weights = valid.to(tokens.dtype)
    pooling = (weights / weights.sum(1, keepdim=True).clamp(min=1))[:, None]  # (B, 1, L)
    return PromptEmbedding(
        tokens=tokens,
        valid=valid,
        pooling=pooling,
        class_valid=torch.ones((tokens.shape[0], 1), dtype=torch.bool, device=tokens.device),
    )


def concat_templates(embeddings: Sequence[PromptEmbedding]) -> PromptEmbedding:
    """Several templates of the same targets as one prompt (tokens joined; W the mean of all
    valid tokens). Every embedding must hold the same number of targets."""
    if not embeddings:
        raise ValueError("embeddings is empty: give at least one template embedding")
    counts = {e.tokens.shape[0] for e in embeddings}
    if len(counts) != 1:
        raise ValueError(f"templates hold different numbers of targets: {sorted(counts)}")
    if len(embeddings) == 1:
        return embeddings[0]
    return template_embedding(
        torch.cat([e.tokens for e in embeddings], 1), torch.cat([e.valid for e in embeddings], 1)
    )
