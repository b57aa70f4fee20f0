"""UNINEXT's test-time image preparation: detectron2's ``ResizeShortestEdge`` with PIL
bilinear resampling on uint8 (antialiased when shrinking), normalisation with the 0..255 RGB
mean and std, zero padding to the backbone's size divisibility (0 for ResNet: the batch's
largest size only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from unipercept.structures import ImageBatch

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def shortest_edge_size(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2's ``ResizeShortestEdge.get_output_shape``: the shorter side to ``short``,
    the longer at most ``max_size``, rounded half up."""
    scale = short / min(height, width)
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_uint8(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(3, H, W) uint8 -> (3, h, w) uint8 with PIL's bilinear filter, as detectron2 resizes
    uint8 images."""
    array = np.ascontiguousarray(image.permute(1, 2, 0).cpu().numpy())
    if tuple(array.shape[:2]) == tuple(size):
        return image.cpu()
    resized = Image.fromarray(array).resize((size[1], size[0]), Image.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1)


class UninextPreprocessor:
    """Images -> the padded, normalised batch UNINEXT's models take.

    Args:
        short_size: shortest edge (UNINEXT: 800 for images; 480 for most video tasks).
        max_size: longest edge at most (1333).
        size_divisibility: pad to a multiple of this (0: the batch's largest size).
    """

    def __init__(self, *, short_size: int = 800, max_size: int = 1333, size_divisibility: int = 0):
        if short_size <= 0 or max_size <= 0:
            raise ValueError(
                f"short_size and max_size must be positive, got {short_size}, {max_size}"
            )
        if size_divisibility < 0:
            raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
        self.short_size = short_size
        self.max_size = max_size
        self.size_divisibility = size_divisibility

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) an image of (height, width) is resized to."""
        return shortest_edge_size(height, width, self.short_size, self.max_size)

    def resize(self, image: Tensor) -> Tensor:
        """(3, H, W) uint8 (or float in [0, 1], rounded to uint8 first) -> resized uint8."""
        return resize_uint8(as_uint8(image), self.input_size(*image.shape[1:]))

    def __call__(self, images: Sequence[Tensor], device: torch.device | str = "cpu") -> ImageBatch:
        """Args:
            images: (3, H, W) RGB images, uint8 or float in [0, 1].

        Returns:
            the batch on ``device`` (padding at the bottom and right is zero after
            normalisation, as detectron2's ``ImageList`` pads).
        """
        prepared, originals = [], []
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[0] != 3 or 0 in image.shape:
                raise ValueError(
                    f"images[{index}] must be a non-empty (3, H, W) RGB tensor, got "
                    f"{tuple(image.shape)}"
                )
            originals.append((int(image.shape[1]), int(image.shape[2])))
            prepared.append(normalize(self.resize(image).to(device)))
        return ImageBatch.from_images(
            prepared, size_divisibility=max(self.size_divisibility, 1), original_sizes=originals
        )


def as_uint8(image: Tensor) -> Tensor:
    """uint8 as is; float in [0, 1] scaled and rounded. Anything else is refused."""
    if image.dtype == torch.uint8:
        return image
    if image.is_floating_point():
        low, high = image.aminmax()
        if not (low >= 0 and high <= 1):  # NaN fails too
            raise ValueError(
                f"a float image must be in [0, 1], got values in [{float(low):g}, {float(high):g}]"
            )
        return (image * 255).round().to(torch.uint8)
    raise ValueError(f"images must be uint8 or float in [0, 1], got {image.dtype}")


def normalize(image: Tensor) -> Tensor:
    """(3, H, W) uint8 -> float32 normalised with UNINEXT's 0..255 mean and std."""
    mean = torch.tensor(PIXEL_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=image.device).view(3, 1, 1)
    return (image.float() - mean) / std
