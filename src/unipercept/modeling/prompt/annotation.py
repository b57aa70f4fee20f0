"""Annotation prompts (SOT, VOS): the target marked by a box or mask in a reference frame.

A crop around the target (with context) goes through a backbone whose first convolution takes
four channels, RGB plus a prior map of the box or mask; the pooled multi-scale features are
the prompt tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.modeling.backbone.base import Backbone
from unipercept.modeling.outputs import PromptEmbedding
from unipercept.ops import roi_align
from unipercept.structures import AnnotationPrompt, ImageBatch, boxes_to_masks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PriorConv2d(nn.Conv2d):
    """A first convolution over RGB plus one prior channel.

    A 3-channel checkpoint (a detector's backbone, or the previous training stage) loads
    without conversion: the prior channel's filters are initialised as the mean of the RGB
    filters, so a uniform prior adds what one more grey channel would.
    """

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        weight = state_dict.get(prefix + "weight")
        if weight is not None and weight.dim() == 4 and weight.shape[1] == self.in_channels - 1:
            state_dict[prefix + "weight"] = torch.cat([weight, weight.mean(1, keepdim=True)], 1)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


@torch.no_grad()
def add_prior_channel(backbone: nn.Module) -> nn.Module:
    """Replaces the first 3-channel convolution of ``backbone`` by a :class:`PriorConv2d` with
    the same weights plus a prior channel; returns ``backbone``.

    Raises:
        ValueError: ``backbone`` has no convolution over 3 input channels.
    """
    for module in backbone.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                prior = PriorConv2d(
                    4,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    child.groups,
                    bias=child.bias is not None,
                ).to(child.weight.device)
                prior.weight.copy_(torch.cat([child.weight, child.weight.mean(1, keepdim=True)], 1))
                if child.bias is not None:
                    prior.bias.copy_(child.bias)
                setattr(module, name, prior)
                # transformers' embedders check the channel count of their input.
                for holder in backbone.modules():
                    if getattr(holder, "num_channels", None) == 3:
                        holder.num_channels = 4
                return backbone
    raise ValueError("backbone has no Conv2d over 3 input channels to extend with a prior channel")


class AnnotationPromptEncoder(nn.Module):
    """Encodes the target of an :class:`AnnotationPrompt` from a crop around it.

    Args:
        backbone: a 3-channel backbone; its first convolution is extended to 4 channels.
        hidden_dim: model width C.
        context_factor: the crop is a square of side ``context_factor * sqrt(w * h)`` around
            the target's box, so some background comes along (as trackers crop templates).
        crop_size: the crop is resized to ``crop_size`` x ``crop_size``.
        tokens_per_side: each level is pooled to ``tokens_per_side**2`` tokens.
    """

    kind = "annotation"

    def __init__(
        self,
        *,
        backbone: Backbone,
        hidden_dim: int = 256,
        context_factor: float = 2.0,
        crop_size: int = 128,
        tokens_per_side: int = 4,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if context_factor < 1:
            raise ValueError(f"context_factor must be >= 1, got {context_factor}")
        self.backbone = add_prior_channel(backbone)
        self.context_factor = context_factor
        self.crop_size = crop_size
        self.tokens_per_side = tokens_per_side
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(32, hidden_dim))
            for c in backbone.out_channels
        )
        self.level_embed = nn.Parameter(torch.randn(len(backbone.out_channels), hidden_dim) * 0.02)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    def crops(self, prompts: Sequence[AnnotationPrompt]) -> Tensor:
        """(B, 4, S, S): normalised RGB and the prior map, cropped around each target."""
        device = self.pixel_mean.device
        crops = []
        for prompt in prompts:
            frame = prompt.frame.to(device)
            rgb = frame.float() / 255.0 if not frame.is_floating_point() else frame.float()
            rgb = (rgb - self.pixel_mean) / self.pixel_std  # (3, H, W)
            if prompt.mask is not None:
                prior = prompt.mask.to(device).float()[None]  # (1, H, W)
            else:
                prior = boxes_to_masks(prompt.box[None].to(device), prompt.image_size).float()
            x1, y1, x2, y2 = prompt.box.tolist()
            side = self.context_factor * math.sqrt(max((x2 - x1) * (y2 - y1), 1.0))
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            region = torch.tensor(
                [[cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]], device=device
            )
            crops.append(
                roi_align(
                    torch.cat([rgb, prior])[None],
                    [region],
                    self.crop_size,
                    sampling_ratio=2,
                    aligned=True,
                )
            )  # (1, 4, S, S)
        return torch.cat(crops)

    def forward(
        self, prompts: Sequence[AnnotationPrompt], images: ImageBatch | None = None
    ) -> PromptEmbedding:
        """Args:
            prompts: B annotations (one per tracked object).

        Returns:
            tokens pooled from every level of the crop's features; W is their mean.
        """
        if not prompts:
            raise ValueError("prompts is empty: give one AnnotationPrompt per object")
        maps = self.backbone(self.crops(prompts))
        tokens = []
        for level, (projection, feature) in enumerate(zip(self.projections, maps, strict=True)):
            pooled = F.adaptive_avg_pool2d(
                projection(feature), self.tokens_per_side
            )  # (B, C, t, t)
            tokens.append(
                pooled.flatten(2).transpose(1, 2) + self.level_embed[level]
            )  # (B, t*t, C)
        token_tensor = torch.cat(tokens, 1)  # (B, L, C)
        batch, length, _ = token_tensor.shape
        return PromptEmbedding(
            tokens=token_tensor,
            valid=torch.ones((batch, length), dtype=torch.bool, device=token_tensor.device),
            pooling=token_tensor.new_full((batch, 1, length), 1.0 / length),
            class_valid=torch.ones((batch, 1), dtype=torch.bool, device=token_tensor.device),
        )
