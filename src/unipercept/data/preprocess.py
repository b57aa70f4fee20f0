"""From the user's images to the model's input: resize, normalise, pad."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from unipercept.structures import ImageBatch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImagePreprocessor:
    """Resizes images so the shorter side is ``short_size`` (the longer at most ``max_size``),
    normalises them, and pads them into an :class:`ImageBatch` that remembers the original
    sizes (post-processing maps results back to them).

    Args:
        short_size, max_size: the inference resolution.
        pixel_mean, pixel_std: normalisation of RGB in [0, 1].
        size_divisibility: padded sizes are multiples of this.
    """

    def __init__(
        self,
        *,
        short_size: int = 800,
        max_size: int = 1333,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        size_divisibility: int = 32,
    ) -> None:
        if short_size <= 0 or max_size <= 0:
            raise ValueError(
                f"short_size and max_size must be positive, got {short_size}, {max_size}"
            )
        self.short_size = short_size
        self.max_size = max_size
        self.mean = torch.tensor(pixel_mean).view(3, 1, 1)
        self.std = torch.tensor(pixel_std).view(3, 1, 1)
        self.size_divisibility = size_divisibility

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The (h, w) an image of (height, width) is resized to."""
        scale = min(self.short_size / min(height, width), self.max_size / max(height, width))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def __call__(self, images: Sequence[Tensor], device: torch.device | str = "cpu") -> ImageBatch:
        """Args:
            images: (3, H, W) RGB images: uint8 in 0..255, or float in [0, 1].

        Returns:
            the batch on ``device``.

        Raises:
            ValueError: a wrong shape, an empty image, another dtype, or a float image with
                values outside [0, 1] (e.g. 0..255 given as float), naming the image.
        """
        prepared, originals = [], []
        for index, image in enumerate(images):
            if image.ndim != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"images[{index}] must be a (3, H, W) RGB tensor, got {tuple(image.shape)}"
                )
            height, width = image.shape[1:]
            if height == 0 or width == 0:
                raise ValueError(f"images[{index}] is empty: {tuple(image.shape)}")
            if image.is_floating_point():
                low, high = image.aminmax()
                if not (low >= 0 and high <= 1):  # NaN fails too
                    raise ValueError(
                        f"images[{index}] is a float tensor with values in [{float(low):g}, "
                        f"{float(high):g}]; float images must be in [0, 1] (pass uint8 for "
                        "0..255)"
                    )
            elif image.dtype != torch.uint8:
                raise ValueError(
                    f"images[{index}] has dtype {image.dtype}; expected uint8 (0..255) or "
                    "float (0..1)"
                )
            originals.append((height, width))
            x = image.to(device)
            x = x.float() / 255.0 if not x.is_floating_point() else x.float()
            size = self.input_size(height, width)
            if size != (height, width):
                x = F.interpolate(
                    x[None], size=size, mode="bilinear", align_corners=False, antialias=True
                )[0]
            prepared.append((x - self.mean.to(x.device)) / self.std.to(x.device))
        return ImageBatch.from_images(
            prepared, size_divisibility=self.size_divisibility, original_sizes=originals
        )
