"""detectron2's bottleneck ResNet as UNINEXT's R50 models use it.

Parameter and buffer names follow detectron2 (``stem.conv1.weight``, ``res2.0.shortcut.norm.bias``,
``res3.0.conv2.norm.running_var`` ...), i.e. UNINEXT's keys relative to
``detr.detr.backbone.0.backbone.`` (and ``detr.detr.ref_backbone.0.backbone.`` for the 4-channel
template backbone of the video models).

Differences from torchvision's ResNet that matter for loading UNINEXT's weights: the stride of a
stage's first block sits in the 3x3 conv (``STRIDE_IN_1X1: False`` in UNINEXT's configs); every
conv carries its norm as a child ``norm``; every norm is a frozen batch norm (eps 1e-5), i.e. a
fixed per-channel affine map, so eval and training forward passes are the same.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.modeling.backbone.frozen_bn import FrozenBatchNorm2d

__all__ = ["RESNET_STAGE_BLOCKS", "D2ResNet"]

# Blocks per stage res2..res5 (detectron2 ``build_resnet_backbone``).
RESNET_STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class _FrozenBatchNorm2d(FrozenBatchNorm2d):
    """Frozen batch norm evaluated with ``F.batch_norm(training=False)`` as detectron2 does at
    inference, which reproduces UNINEXT's features bit for bit on CPU; the project's
    scale-and-shift form differs by float rounding (a few 1e-6 on the fixture)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            eps=self.eps,
        )


class _ConvNorm(nn.Conv2d):
    """Bias-free conv followed by a frozen batch norm stored as the child ``norm`` (detectron2's
    ``Conv2d(..., norm=...)``), so keys read ``<name>.weight`` and ``<name>.norm.*``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=False,
        )
        self.norm = _FrozenBatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class _Stem(nn.Module):
    """7x7/2 conv + norm + ReLU, then 3x3/2 max pool: stride 4."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = _ConvNorm(in_channels, out_channels, kernel_size=7, stride=2, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class _Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, grouped) -> 1x1 with a projection shortcut when the width changes."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        bottleneck_channels: int,
        stride: int,
        num_groups: int,
    ) -> None:
        super().__init__()
        # detectron2 creates the projection whenever the widths differ, not when the stride does
        # (the first block of res2 has stride 1 and a projection).
        self.shortcut = (
            _ConvNorm(in_channels, out_channels, kernel_size=1, stride=stride)
            if in_channels != out_channels
            else None
        )
        self.conv1 = _ConvNorm(in_channels, bottleneck_channels, kernel_size=1)
        self.conv2 = _ConvNorm(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            groups=num_groups,
        )
        self.conv3 = _ConvNorm(bottleneck_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class D2ResNet(nn.Module):
    """detectron2's bottleneck ResNet (FrozenBN, stride in the 3x3 conv, res5 dilation 1) that
    returns res3, res4 and res5.

    res2 is computed (its weights are in every UNINEXT checkpoint and feed res3) but not returned.

    Attributes:
        out_channels: channels of res3, res4, res5 (``2 * res2_channels``, ``4 *``, ``8 *``).
        out_strides: (8, 16, 32).
        size_divisibility: 0 - UNINEXT pads an R50 batch only to its largest image.
    """

    out_strides: tuple[int, int, int] = (8, 16, 32)
    size_divisibility: int = 0

    def __init__(
        self,
        *,
        depth: int = 50,
        in_channels: int = 3,
        stem_channels: int = 64,
        res2_channels: int = 256,
        width_per_group: int = 64,
        num_groups: int = 1,
    ) -> None:
        """Args:
        depth: 50, 101 or 152 (block counts from :data:`RESNET_STAGE_BLOCKS`).
        in_channels: 3 for images, 4 for UNINEXT's template backbone (RGB + prior).
        stem_channels: output channels of the stem conv.
        res2_channels: output channels of res2; doubled at every later stage.
        width_per_group: bottleneck width of res2 per group; doubled at every later stage.
        num_groups: groups of the 3x3 convs (1: ResNet, >1: ResNeXt).
        """
        super().__init__()
        if depth not in RESNET_STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(RESNET_STAGE_BLOCKS)}, got {depth}")
        self.stem = _Stem(in_channels=in_channels, out_channels=stem_channels)
        stage_in = stem_channels
        stage_out = res2_channels
        bottleneck = num_groups * width_per_group
        for index, num_blocks in enumerate(RESNET_STAGE_BLOCKS[depth]):
            blocks = []
            for block in range(num_blocks):
                blocks.append(
                    _Bottleneck(
                        in_channels=stage_in if block == 0 else stage_out,
                        out_channels=stage_out,
                        bottleneck_channels=bottleneck,
                        # res2 keeps the stem's stride 4; every later stage halves once.
                        stride=2 if block == 0 and index > 0 else 1,
                        num_groups=num_groups,
                    )
                )
            self.add_module(f"res{index + 2}", nn.Sequential(*blocks))
            stage_in = stage_out
            stage_out *= 2
            bottleneck *= 2
        self.out_channels = (2 * res2_channels, 4 * res2_channels, 8 * res2_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Args:
            x: (B, C, H, W) normalised images (C = ``in_channels``).

        Returns:
            [res3, res4, res5]: (B, out_channels[i], h_i, w_i) with h_i = ceil(H / 8), ceil(H / 16),
            ceil(H / 32) (each stride-2 layer rounds up).
        """
        x = self.stem(x)  # (B, stem, H/4, W/4)
        x = self.res2(x)  # (B, res2, H/4, W/4)
        res3 = self.res3(x)  # (B, 2 res2, H/8, W/8)
        res4 = self.res4(res3)  # (B, 4 res2, H/16, W/16)
        res5 = self.res5(res4)  # (B, 8 res2, H/32, W/32)
        return [res3, res4, res5]
