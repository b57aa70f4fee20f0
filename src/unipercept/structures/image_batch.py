"""A batch of images of different sizes, padded into one tensor with a valid-pixel mask."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class ImageBatch:
    """Padded images plus what is needed to map results back to each original image.

    Attributes:
        tensor: (B, 3, H, W) float images, padded at the bottom and right so that H and W are
            multiples of the batch's size divisibility.
        valid: (B, H, W) bool, True on real pixels, False on padding.
        image_sizes: B ``(h, w)`` sizes of the images as given to the model (after resizing,
            before padding).
        original_sizes: B ``(h, w)`` sizes of the images as the user gave them (before
            resizing); results are reported in these coordinates.

    Example:
        >>> batch = ImageBatch.from_images([torch.rand(3, 50, 70), torch.rand(3, 64, 30)])
        >>> batch.tensor.shape, batch.image_sizes
        (torch.Size([2, 3, 64, 96]), ((50, 70), (64, 30)))
    """

    tensor: Tensor
    valid: Tensor
    image_sizes: tuple[tuple[int, int], ...]
    original_sizes: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if self.tensor.ndim != 4 or self.tensor.shape[1] != 3:
            raise ValueError(f"tensor must have shape (B, 3, H, W), got {tuple(self.tensor.shape)}")
        if not self.tensor.is_floating_point():
            raise ValueError(f"tensor must be floating point, got {self.tensor.dtype}")
        batch, _, height, width = self.tensor.shape
        if self.valid.shape != (batch, height, width) or self.valid.dtype != torch.bool:
            raise ValueError(
                f"valid must be a bool tensor of shape {(batch, height, width)}, got "
                f"{self.valid.dtype} {tuple(self.valid.shape)}"
            )
        for name in ("image_sizes", "original_sizes"):
            sizes = getattr(self, name)
            if len(sizes) != batch:
                raise ValueError(f"{name} has {len(sizes)} entries for a batch of {batch}")
        for index, (h, w) in enumerate(self.image_sizes):
            if not (0 < h <= height and 0 < w <= width):
                raise ValueError(
                    f"image_sizes[{index}] = {(h, w)} does not fit the padded size "
                    f"{(height, width)}"
                )

    @classmethod
    def from_images(
        cls,
        images: Sequence[Tensor],
        *,
        size_divisibility: int = 32,
        pad_value: float = 0.0,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> ImageBatch:
        """Pads a list of images into a batch.

        Args:
            images: B float tensors (3, h_i, w_i), already resized and normalised.
            size_divisibility: the padded height and width are multiples of this (32 matches the
                coarsest backbone stride); 0 or 1 pads only to the largest image.
            pad_value: value written into the padding.
            original_sizes: the sizes before resizing; defaults to the images' own sizes.
        """
        if not images:
            raise ValueError("images must hold at least one image")
        for index, image in enumerate(images):
            if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"images[{index}] must be a (3, H, W) tensor, got {shape}")
            if not image.is_floating_point():
                raise ValueError(f"images[{index}] must be floating point, got {image.dtype}")
            if image.shape[1] == 0 or image.shape[2] == 0:
                raise ValueError(f"images[{index}] is empty: {tuple(image.shape)}")
        if size_divisibility < 0:
            raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
        stride = max(size_divisibility, 1)
        height = math.ceil(max(image.shape[1] for image in images) / stride) * stride
        width = math.ceil(max(image.shape[2] for image in images) / stride) * stride
        first = images[0]
        tensor = first.new_full((len(images), 3, height, width), pad_value)  # (B, 3, H, W)
        valid = torch.zeros((len(images), height, width), dtype=torch.bool, device=first.device)
        for index, image in enumerate(images):
            tensor[index, :, : image.shape[1], : image.shape[2]].copy_(image)
            valid[index, : image.shape[1], : image.shape[2]] = True
        sizes = tuple((int(image.shape[1]), int(image.shape[2])) for image in images)
        originals = tuple((int(h), int(w)) for h, w in original_sizes) if original_sizes else sizes
        return cls(tensor=tensor, valid=valid, image_sizes=sizes, original_sizes=originals)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def image(self, index: int) -> Tensor:
        """The ``index``-th image without its padding, (3, h, w)."""
        h, w = self.image_sizes[index]
        return self.tensor[index, :, :h, :w]

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(
            tensor=self.tensor.to(device),
            valid=self.valid.to(device),
            image_sizes=self.image_sizes,
            original_sizes=self.original_sizes,
        )
