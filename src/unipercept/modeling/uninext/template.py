"""UNINEXT's SOT/VOS template path: the annotation prompt as "language" tokens.

The target of a box (SOT) or mask (VOS) prompt is cropped from the reference frame with context,
a fourth channel marks the target (box rectangle or mask), and a separate 4-channel backbone
(``ref_backbone``) encodes the crop. The shared ``input_proj`` projects its maps to four levels,
:class:`SotFuser` sums them at the finest level and ``adjust_layer`` maps every position to the
text width, so the template replaces the caption's token features (UNINEXT
``models/ddetrs_vid_dn.py:101-136,175-214,529-555,880-906``).

UNINEXT checkpoint keys: ``detr.sot_fuser.*`` -> ``sot_fuser.*``, ``detr.adjust_layer.*`` ->
``adjust_layer.*``; ``ref_backbone`` is the backbone module passed in (UNINEXT
``detr.detr.ref_backbone.0.backbone.*``); ``input_proj`` (``detr.detr.input_proj.*``) is owned by
the main model and passed to :meth:`TemplateEncoder.forward`.

Position encodings play no part: UNINEXT computes them for the template and discards them. Pixel
padding reaches the tokens only through the mask: the finest level's mask (the template's pad
mask, nearest-resized) becomes the token mask; the convolutions see padded positions like any
other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.modeling.uninext.masks import aligned_bilinear


class TemplateTokens(NamedTuple):
    """Template features in the place of a caption's token features.

    Attributes:
        hidden: (B, T, C_text) token features.
        masks: (B, T) bool, True = valid (the position is not padding). UNINEXT's fusion block
            ignores this mask for bool masks; its masked mean pooling uses it.
    """

    hidden: Tensor
    masks: Tensor


def template_crop(
    image: Tensor,
    box_xyxy: Tensor,
    *,
    prior: Literal["box"] | Tensor,
    size: int,
    search_area_factor: float = 2.0,
    image_pad_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Crops the square template around a box, as UNINEXT's ``get_template_4c``.

    The crop has side ``ceil(sqrt(w * h) * search_area_factor)`` around the box centre, with
    corners rounded by Python's ``round`` (half to even). Parts outside the image are zero (the
    mean colour, as the image is normalised) and marked as padding. Where the crop passes the
    right or bottom edge, UNINEXT stops one pixel early and pads one pixel more, so the image's
    last column/row is dropped; this is kept. The crop is resized bilinearly (no antialias) to
    ``size`` x ``size``; the pad mask is resized the same way and any padding contribution marks
    a pixel as padding.

    Args:
        image: (3, H, W) normalised image, as the backbone gets it (the resized frame, padded
            like the batch tensor when the backbone needs a size divisibility).
        box_xyxy: (4,) or (1, 4) target box in ``image``'s pixels.
        prior: ``"box"`` for the box rectangle (rounded on the crop), or an (H, W) mask (float
            or bool) of the target on ``image``.
        size: template side S (256 in the released models).
        search_area_factor: context factor of the crop side.
        image_pad_mask: (H, W) bool, True where ``image`` is padding; None = no padding.

    Returns:
        ``(tensor_4ch, pad_mask)``: (1, 4, S, S) RGB crop plus the prior channel, and
        (1, S, S) bool, True = padding.
    """
    height, width = image.shape[-2:]
    box = box_xyxy.reshape(4)
    # The width and height are taken in the box's dtype before going to Python floats, as
    # UNINEXT converts xyxy to xywh on the tensor; the crop arithmetic is then in float64.
    x, y = box[:2].tolist()
    w, h = (box[2:] - box[:2]).tolist()

    crop_size = math.ceil(math.sqrt(w * h) * search_area_factor)
    x1 = round(x + 0.5 * w - crop_size * 0.5)
    y1 = round(y + 0.5 * h - crop_size * 0.5)
    x2 = x1 + crop_size
    y2 = y1 + crop_size
    pad_left = max(0, -x1)
    pad_top = max(0, -y1)
    # One pixel wider than needed at the right/bottom edge (UNINEXT ddetrs_vid_dn.py:108,110).
    pad_right = max(x2 - width + 1, 0)
    pad_bottom = max(y2 - height + 1, 0)
    rows = slice(y1 + pad_top, y2 - pad_bottom)
    cols = slice(x1 + pad_left, x2 - pad_right)
    padding = (pad_left, pad_right, pad_top, pad_bottom)

    if image_pad_mask is None:
        image_pad_mask = torch.zeros((height, width), dtype=torch.bool, device=image.device)
    rgb = F.pad(image[None, :, rows, cols], padding, value=0.0)  # (1, 3, s, s)
    pad = F.pad(image_pad_mask[rows, cols].to(image.dtype)[None, None], padding, value=1.0)
    if isinstance(prior, str):
        if prior != "box":
            raise ValueError(f"prior must be 'box' or a mask tensor, got {prior!r}")
        target = torch.zeros_like(pad)  # (1, 1, s, s)
        # Box corners on the crop, rounded; only the starts are clamped (as in UNINEXT).
        left = round(x - x1)
        right = round(left + w)
        top = round(y - y1)
        bottom = round(top + h)
        target[:, :, max(0, top) : bottom, max(0, left) : right] = 1.0
    else:
        # A smaller mask would be cropped differently and still resize to S x S unnoticed
        # (UNINEXT asserts the sizes match, ddetrs_vid_dn.py:555).
        if prior.shape != image.shape[-2:]:
            raise ValueError(f"prior mask {tuple(prior.shape)} must be (H, W) = {(height, width)}")
        target = F.pad(prior[rows, cols].to(image.dtype)[None, None], padding, value=0.0)

    def resize(x: Tensor) -> Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)

    tensor_4ch = torch.cat([resize(rgb), resize(target)], dim=1)  # (1, 4, S, S)
    pad_mask = resize(pad)[0].bool()  # (1, S, S)
    return tensor_4ch, pad_mask


class SotFuser(nn.Module):
    """Sums four feature levels (P3..P6) at the finest level's resolution (UNINEXT's
    ``FeatureFuser``): a 3x3 convolution per level, coarser levels upsampled with
    :func:`aligned_bilinear`.

    Args:
        in_channels: channels of each level.
        channels: output channels.
    """

    num_levels = 4

    def __init__(self, *, in_channels: int = 256, channels: int = 256) -> None:
        super().__init__()
        self.refine = nn.ModuleList(
            nn.Conv2d(in_channels, channels, 3, padding=1) for _ in range(self.num_levels)
        )

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Args:
            features: the four levels P3..P6, (B, in_channels, H_l, W_l), finest first; each
                size must divide the finest one by the same integer in both directions.

        Returns:
            (B, channels, H_0, W_0) the summed levels.
        """
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} levels, got {len(features)}")
        fused = self.refine[0](features[0])  # (B, C, H0, W0)
        target_h, target_w = fused.shape[-2:]
        for conv, feature in zip(self.refine[1:], features[1:], strict=True):
            level = conv(feature)  # (B, C, Hl, Wl)
            h, w = level.shape[-2:]
            factor = target_h // h
            if target_h != factor * h or target_w != factor * w:
                raise ValueError(
                    f"level size {(h, w)} does not divide {(target_h, target_w)} by one integer"
                )
            fused = fused + aligned_bilinear(level, factor)
        return fused


def project_features(maps: Sequence[Tensor], input_proj: Sequence[nn.Module]) -> list[Tensor]:
    """Applies the shared per-level projections, as UNINEXT's ``forward_backbone``.

    Level ``l < len(maps)`` projects ``maps[l]``; the first extra level projects the coarsest
    backbone map (res5, not its projection), further extra levels the previous projection.

    Args:
        maps: backbone maps, finest first, (B, C_l, H_l, W_l).
        input_proj: one module per output level.

    Returns:
        ``len(input_proj)`` maps (B, hidden_dim, H_l, W_l).
    """
    projected = [proj(x) for proj, x in zip(input_proj, maps, strict=False)]
    for index in range(len(maps), len(input_proj)):
        source = maps[-1] if index == len(maps) else projected[-1]
        projected.append(input_proj[index](source))
    return projected


class TemplateEncoder(nn.Module):
    """Encodes a 4-channel template into token features (UNINEXT ``coco_inference_ref`` and
    ``coco_inference_ref_vos`` with ``EXTRA_BACKBONE_FOR_TEMPLATE`` and ``SOT_FEAT_FUSION``).

    Args:
        ref_backbone: the 4-channel backbone; maps a (B, 4, S, S) template to its output maps
            (finest first, as a list or a name -> map mapping in that order).
        hidden_dim: width of the projected levels.
        text_dim: width of the text features the tokens stand in for (768 for BERT-base).
        template_size: template side S (256 released; used by :meth:`encode_prompt`).
        search_area_factor: context factor of the crop (used by :meth:`encode_prompt`).
    """

    def __init__(
        self,
        *,
        ref_backbone: nn.Module,
        hidden_dim: int = 256,
        text_dim: int = 768,
        template_size: int = 256,
        search_area_factor: float = 2.0,
    ) -> None:
        super().__init__()
        self.ref_backbone = ref_backbone
        self.sot_fuser = SotFuser(in_channels=hidden_dim, channels=hidden_dim)
        self.adjust_layer = nn.Linear(hidden_dim, text_dim)
        self.template_size = template_size
        self.search_area_factor = search_area_factor

    def forward(
        self, tensor_4ch: Tensor, pad_mask: Tensor, input_proj: Sequence[nn.Module]
    ) -> TemplateTokens:
        """Args:
            tensor_4ch: (B, 4, S, S) templates from :func:`template_crop`.
            pad_mask: (B, S, S) bool, True = padding.
            input_proj: the main model's per-level projections (shared with the search
                branch): 1x1 conv + GroupNorm per backbone map, then 3x3 stride-2 conv +
                GroupNorm on the coarsest map.

        Returns:
            :class:`TemplateTokens` with hidden (B, (S/8)^2, text_dim) and masks (B, (S/8)^2).
        """
        maps = self.ref_backbone(tensor_4ch)
        if isinstance(maps, Mapping):
            maps = list(maps.values())
        return self.encode_features(maps, pad_mask, input_proj)

    def encode_features(
        self, ref_maps: Sequence[Tensor], pad_mask: Tensor, input_proj: Sequence[nn.Module]
    ) -> TemplateTokens:
        """The part of :meth:`forward` after the backbone.

        Args:
            ref_maps: the backbone's maps (res3, res4, res5), (B, C_l, H_l, W_l).
            pad_mask: (B, S, S) bool template padding, True = padding.
            input_proj: as in :meth:`forward`.

        Returns:
            :class:`TemplateTokens` as in :meth:`forward`.
        """
        levels = project_features(ref_maps, input_proj)
        fused = self.sot_fuser(levels)  # (B, C, H0, W0)
        tokens = fused.flatten(2).transpose(1, 2)  # (B, H0*W0, C)
        # The finest level's padding: the pixel mask nearest-resized (UNINEXT's MaskedBackbone).
        padded = F.interpolate(pad_mask[:, None].float(), size=fused.shape[-2:], mode="nearest")
        valid = ~padded[:, 0].bool().flatten(1)  # (B, H0*W0)
        return TemplateTokens(self.adjust_layer(tokens), valid)

    def encode_prompt(
        self,
        image: Tensor,
        box_xyxy: Tensor,
        input_proj: Sequence[nn.Module],
        *,
        prior: Literal["box"] | Tensor = "box",
        image_pad_mask: Tensor | None = None,
    ) -> TemplateTokens:
        """Crops the template from a frame and encodes it (one target).

        Args:
            image: (3, H, W) normalised frame (as the search branch gets it).
            box_xyxy: (4,) target box in ``image``'s pixels.
            input_proj: as in :meth:`forward`.
            prior: ``"box"`` (SOT) or an (H, W) target mask (VOS).
            image_pad_mask: (H, W) bool, True where ``image`` is padding.

        Returns:
            :class:`TemplateTokens` with batch size 1.
        """
        tensor_4ch, pad_mask = template_crop(
            image,
            box_xyxy,
            prior=prior,
            size=self.template_size,
            search_area_factor=self.search_area_factor,
            image_pad_mask=image_pad_mask,
        )
        return self(tensor_4ch, pad_mask, input_proj)


def concat_templates(first: TemplateTokens, latest: TemplateTokens) -> TemplateTokens:
    """Joins two templates along the tokens, first template first, as UNINEXT does for SOT with
    online update ([first, last updated]) and for VOS ([first, previous]).

    Args:
        first: tokens of the first template, hidden (B, T1, C) and masks (B, T1).
        latest: tokens of the latest template, hidden (B, T2, C) and masks (B, T2).

    Returns:
        :class:`TemplateTokens` with hidden (B, T1 + T2, C) and masks (B, T1 + T2).
    """
    return TemplateTokens(
        torch.cat([first.hidden, latest.hidden], dim=1),
        torch.cat([first.masks, latest.masks], dim=1),
    )
