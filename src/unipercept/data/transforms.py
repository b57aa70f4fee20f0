"""Training transforms applied to a whole clip at once: every frame gets the same random
parameters, so objects stay where they are relative to each other and across time.

A :class:`Clip` holds frames (uint8 images), their targets (:class:`Instances` with dense
bool masks) and the expressions that describe them. Each transform takes the clip and a
``torch.Generator`` and returns a new clip; :class:`Compose` chains them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from unipercept.structures import Instances, RLEMasks, masks_to_boxes


@dataclass(frozen=True, eq=False)
class Clip:
    """Frames of one training example (one frame for an image).

    Attributes:
        images: per frame, (3, H, W) uint8 RGB.
        targets: per frame, :class:`Instances` of that frame's size with ``boxes`` (xyxy
            pixels), ``labels``, optional dense ``masks`` and ``track_ids``.
        expressions: sentences about the clip, kept true under the transforms.
        expression_targets: for each expression, the ``track_ids`` of the objects it names.
    """

    images: tuple[Tensor, ...]
    targets: tuple[Instances, ...]
    expressions: tuple[str, ...] = ()
    expression_targets: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if len(self.images) != len(self.targets) or not self.images:
            raise ValueError(
                f"a clip needs one target per image, got {len(self.images)} images "
                f"and {len(self.targets)} targets"
            )
        for index, (image, target) in enumerate(zip(self.images, self.targets, strict=True)):
            if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
                raise ValueError(
                    f"images[{index}] must be (3, H, W) uint8, got "
                    f"{image.dtype} {tuple(image.shape)}"
                )
            if tuple(image.shape[1:]) != target.image_size:
                raise ValueError(
                    f"targets[{index}] has image_size {target.image_size}, the image "
                    f"is {tuple(image.shape[1:])}"
                )
            if isinstance(target.masks, RLEMasks):
                raise ValueError(f"targets[{index}] has RLE masks: decode them (dense_targets)")
        if self.expression_targets and len(self.expression_targets) != len(self.expressions):
            raise ValueError(
                f"{len(self.expression_targets)} expression_targets for "
                f"{len(self.expressions)} expressions"
            )


def dense_targets(target: Instances) -> Instances:
    """The same instances with RLE masks decoded to bool tensors (transforms need pixels)."""
    if isinstance(target.masks, RLEMasks):
        return target.replace(masks=target.masks.decode())
    return target


def _keep_visible(target: Instances, min_size: float = 1.0) -> Instances:
    """Drops instances left with no area (boxes under ``min_size`` pixels, or empty masks)."""
    boxes = target.boxes
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    if target.masks is not None:
        keep &= target.masks.flatten(1).any(1)
    return target[keep]


def resize_frame(
    image: Tensor, target: Instances, size: tuple[int, int]
) -> tuple[Tensor, Instances]:
    """Resizes one image (antialiased) and its instances to ``size = (h, w)``."""
    height, width = image.shape[1:]
    resized = (
        F.interpolate(
            image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
        )[0]
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
    )
    scale = torch.tensor([size[1] / width, size[0] / height] * 2)
    fields = {"boxes": target.boxes * scale}
    if target.masks is not None:
        masks = F.interpolate(target.masks[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        fields["masks"] = masks
    return resized, Instances(size, **{**target.fields(), **fields})


def crop_frame(
    image: Tensor, target: Instances, top: int, left: int, height: int, width: int
) -> tuple[Tensor, Instances]:
    """Crops one image and its instances; boxes follow the masks that remain, and
    instances left with no area are dropped."""
    cropped = image[:, top : top + height, left : left + width]
    shift = torch.tensor([left, top, left, top], dtype=target.boxes.dtype)
    boxes = target.boxes - shift
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    fields = {"boxes": boxes}
    if target.masks is not None:
        masks = target.masks[:, top : top + height, left : left + width]
        fields["masks"] = masks
        # The crop may cut a mask: its box is the tight box of what remains.
        fields["boxes"] = masks_to_boxes(masks).to(boxes.dtype)
    return cropped, _keep_visible(Instances((height, width), **{**target.fields(), **fields}))


class ResizeShortestEdge:
    """Resizes so the shorter side is one of ``short_sizes`` (drawn at random), the longer at
    most ``max_size``."""

    def __init__(self, *, short_sizes: Sequence[int], max_size: int) -> None:
        if not short_sizes or min(short_sizes) <= 0 or max_size <= 0:
            raise ValueError(
                f"short_sizes and max_size must be positive, got {short_sizes}, {max_size}"
            )
        self.short_sizes = tuple(short_sizes)
        self.max_size = max_size

    def output_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        scale = min(short / min(height, width), self.max_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, clip: Clip, generator: torch.Generator) -> Clip:
        short = self.short_sizes[
            int(torch.randint(len(self.short_sizes), (1,), generator=generator))
        ]
        frames = [
            resize_frame(image, target, self.output_size(*image.shape[1:], short))
            for image, target in zip(clip.images, clip.targets, strict=True)
        ]
        return replace(
            clip, images=tuple(f[0] for f in frames), targets=tuple(f[1] for f in frames)
        )


class RandomCrop:
    """Crops the same random window from every frame; its size is a random fraction of the
    frame between ``min_fraction`` and 1 on each side (DETR's random resize-and-crop is
    ResizeShortestEdge, RandomCrop, ResizeShortestEdge)."""

    def __init__(self, *, min_fraction: float = 0.6, probability: float = 0.5) -> None:
        if not 0 < min_fraction <= 1:
            raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
        self.min_fraction = min_fraction
        self.probability = probability

    def __call__(self, clip: Clip, generator: torch.Generator) -> Clip:
        if float(torch.rand((), generator=generator)) >= self.probability:
            return clip
        height, width = clip.images[0].shape[1:]
        fractions = self.min_fraction + (1 - self.min_fraction) * torch.rand(2, generator=generator)
        crop_h, crop_w = max(1, int(height * fractions[0])), max(1, int(width * fractions[1]))
        top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
        frames = [
            crop_frame(image, target, top, left, crop_h, crop_w)
            for image, target in zip(clip.images, clip.targets, strict=True)
        ]
        return replace(
            clip, images=tuple(f[0] for f in frames), targets=tuple(f[1] for f in frames)
        )


_SIDE = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """Exchanges "left" and "right" (and "leftmost"/"rightmost"), keeping capitalisation."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(1)
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            other = other.upper()
        elif word[0].isupper():
            other = other.capitalize()
        return other + (match.group(2) or "")

    return _SIDE.sub(swap, text)


class HorizontalFlip:
    """Mirrors every frame with probability ``probability``; expressions swap left and right
    so they still describe their object."""

    def __init__(self, *, probability: float = 0.5) -> None:
        self.probability = probability

    def __call__(self, clip: Clip, generator: torch.Generator) -> Clip:
        if float(torch.rand((), generator=generator)) >= self.probability:
            return clip
        images, targets = [], []
        for image, target in zip(clip.images, clip.targets, strict=True):
            width = image.shape[2]
            boxes = target.boxes[:, [2, 1, 0, 3]] * torch.tensor(
                [-1.0, 1.0, -1.0, 1.0]
            ) + torch.tensor([width, 0.0, width, 0.0])
            fields = {"boxes": boxes}
            if target.masks is not None:
                fields["masks"] = target.masks.flip(-1)
            images.append(image.flip(-1))
            targets.append(target.replace(**fields))
        return replace(
            clip,
            images=tuple(images),
            targets=tuple(targets),
            expressions=tuple(swap_left_right(t) for t in clip.expressions),
        )


class ColorJitter:
    """Random brightness, contrast and saturation, the same for every frame of the clip."""

    def __init__(
        self, *, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.3
    ) -> None:
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, clip: Clip, generator: torch.Generator) -> Clip:
        factors = 1 + (torch.rand(3, generator=generator) * 2 - 1) * torch.tensor(
            [self.brightness, self.contrast, self.saturation]
        )
        images = []
        for image in clip.images:
            x = image.float() * factors[0]
            grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]  # (1, H, W)
            x = (x - grey.mean()) * factors[1] + grey.mean()
            grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
            x = (x - grey) * factors[2] + grey
            images.append(x.round().clamp(0, 255).to(torch.uint8))
        return replace(clip, images=tuple(images))


class LargeScaleJitter:
    """Large-scale jitter (Ghiasi et al., Copy-Paste): scale the clip by a random factor of
    ``output_size``, then crop (or pad with zeros) to ``output_size``."""

    def __init__(self, *, output_size: int, min_scale: float = 0.1, max_scale: float = 2.0) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        self.output_size = output_size
        self.min_scale, self.max_scale = min_scale, max_scale

    def __call__(self, clip: Clip, generator: torch.Generator) -> Clip:
        factor = self.min_scale + (self.max_scale - self.min_scale) * float(
            torch.rand((), generator=generator)
        )
        height, width = clip.images[0].shape[1:]
        scale = factor * self.output_size / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        resized = [resize_frame(i, t, size) for i, t in zip(clip.images, clip.targets, strict=True)]
        out = self.output_size
        top = int(torch.randint(max(size[0] - out, 0) + 1, (1,), generator=generator))
        left = int(torch.randint(max(size[1] - out, 0) + 1, (1,), generator=generator))
        frames = []
        for image, target in resized:
            image, target = crop_frame(
                image, target, top, left, min(out, size[0]), min(out, size[1])
            )
            padded = image.new_zeros((3, out, out))
            padded[:, : image.shape[1], : image.shape[2]] = image
            fields = (
                {}
                if target.masks is None
                else {
                    "masks": F.pad(target.masks, (0, out - image.shape[2], 0, out - image.shape[1]))
                }
            )
            frames.append((padded, Instances((out, out), **{**target.fields(), **fields})))
        return replace(
            clip, images=tuple(f[0] for f in frames), targets=tuple(f[1] for f in frames)
        )


class Compose:
    """Applies transforms in order with one generator (so a seed fixes the whole chain)."""

    def __init__(self, transforms: Sequence[object]) -> None:
        self.transforms = list(transforms)

    def __call__(self, clip: Clip, generator: torch.Generator) -> Clip:
        for transform in self.transforms:
            clip = transform(clip, generator)
        return clip


def detr_train_transform(
    *, max_size: int = 1333, short_sizes: Sequence[int] | None = None
) -> Compose:
    """DETR's training augmentation: flip, multi-scale resize, and half the time a random
    crop between two resizes; then colour jitter."""
    sizes = tuple(short_sizes or range(480, 801, 32))
    return Compose(
        [
            HorizontalFlip(probability=0.5),
            ResizeShortestEdge(short_sizes=(400, 500, 600), max_size=max_size),
            RandomCrop(min_fraction=0.6, probability=0.5),
            ResizeShortestEdge(short_sizes=sizes, max_size=max_size),
            ColorJitter(),
        ]
    )
