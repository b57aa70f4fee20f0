"""The interface every vision backbone implements."""

from __future__ import annotations

from torch import Tensor, nn


class Backbone(nn.Module):
    """A network that maps images to feature maps at several strides.

    Subclasses set ``out_channels`` and ``out_strides`` (one entry per returned map, finest
    first) and implement :meth:`forward`.
    """

    out_channels: tuple[int, ...]
    out_strides: tuple[int, ...]

    def forward(self, images: Tensor) -> list[Tensor]:
        """Args:
            images: (B, 3, H, W) normalised images.

        Returns:
            One (B, out_channels[i], ceil(H / out_strides[i]), ceil(W / out_strides[i])) map per
            output, finest first.
        """
        raise NotImplementedError

    def freeze_stages(self, num_stages: int) -> None:
        """Stops gradients to the stem and the first ``num_stages - 1`` stages (0: none)."""
        raise NotImplementedError


def freeze(module: nn.Module) -> None:
    """Turns off gradients for every parameter of ``module``."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def trainable_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
