"""Dynamic-convolution mask head (CondInst, ReferFormer).

A mask branch turns the finest neck map (optionally fused with a stride-4 backbone map) into a
few-channel mask feature map shared by all instances. For each query a controller emits the
weights of three 1x1 convolutions; applied to the mask features plus each pixel's coordinates
relative to the query's box centre, they give that instance's mask logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dynamic_mask_params(mask_dim: int, hidden: int = 8) -> int:
    """Parameters of the three 1x1 convolutions (mask_dim + 2 -> hidden -> hidden -> 1)."""
    return (mask_dim + 2) * hidden + hidden + hidden * hidden + hidden + hidden + 1


def dynamic_mask_logits(
    features: Tensor,
    batch_index: Tensor,
    kernels: Tensor,
    centers: Tensor,
    image_sizes: Tensor,
    stride: int,
    hidden: int = 8,
) -> Tensor:
    """Mask logits of M selected instances.

    Args:
        features: (B, D, h, w) mask features of the padded batch.
        batch_index: (M,) image of each instance.
        kernels: (M, P) dynamic parameters from the controller.
        centers: (M, 2) box centres (x, y), normalised by the image size.
        image_sizes: (B, 2) image (height, width) in input pixels.
        stride: input pixels per mask-feature pixel.

    Returns:
        (M, h, w) logits.
    """
    count = batch_index.shape[0]
    mask_dim, height, width = features.shape[1:]
    if count == 0:
        return features.new_zeros((0, height, width))
    selected = features[batch_index]  # (M, D, h, w)
    # Coordinates in float32 whatever the features' dtype: in bfloat16, pixel 600 is rounded
    # to a multiple of 4.
    sizes = image_sizes[batch_index].float()  # (M, 2)
    ys = (torch.arange(height, device=features.device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=features.device, dtype=torch.float32) + 0.5) * stride
    relative_x = xs[None, :] / sizes[:, 1:2] - centers[:, 0:1]  # (M, w)
    relative_y = ys[None, :] / sizes[:, 0:1] - centers[:, 1:2]  # (M, h)
    coords = torch.stack(
        (
            relative_x[:, None, :].expand(-1, height, -1),
            relative_y[:, :, None].expand(-1, -1, width),
        ),
        1,
    )  # (M, 2, h, w)
    x = torch.cat((selected, coords.to(selected.dtype)), 1).flatten(2)  # (M, D+2, h*w)
    sizes_of = [(mask_dim + 2) * hidden, hidden * hidden, hidden, hidden, hidden, 1]
    w1, w2, w3, b1, b2, b3 = kernels.split(sizes_of, dim=1)
    # The bias is added inside each product (baddbmm) and the ReLU done in place: with many
    # instances these (M, 8, h*w) maps are the mask head's largest tensors.
    x = torch.baddbmm(b1[..., None], w1.view(count, hidden, mask_dim + 2), x).relu_()  # (M,8,hw)
    x = torch.baddbmm(b2[..., None], w2.view(count, hidden, hidden), x).relu_()  # (M, 8, hw)
    x = torch.baddbmm(b3[..., None], w3.view(count, 1, hidden), x)  # (M, 1, hw)
    return x.view(count, height, width)


class MaskBranch(nn.Module):
    """Mask features from the stride-8 neck map, optionally refined with a stride-4 map.

    Args:
        in_channels: channels of the stride-8 neck map (the model width).
        lateral_channels: channels of a stride-4 backbone map, or None for stride-8 masks.
        channels: width of the branch's convolutions.
        mask_dim: channels of the mask features the dynamic convolutions read.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        lateral_channels: int | None = None,
        channels: int = 128,
        mask_dim: int = 8,
        num_convs: int = 3,
    ) -> None:
        super().__init__()
        self.stride = 4 if lateral_channels else 8
        self.reduce = nn.Conv2d(in_channels, channels, 1)
        self.lateral = nn.Conv2d(lateral_channels, channels, 1) if lateral_channels else None
        tower: list[nn.Module] = []
        for _ in range(num_convs):
            tower += [
                nn.Conv2d(channels, channels, 3, padding=1),
                nn.GroupNorm(32, channels),
                nn.ReLU(),
            ]
        self.tower = nn.Sequential(*tower)
        self.out = nn.Conv2d(channels, mask_dim, 1)
        self.mask_dim = mask_dim

    def forward(self, finest: Tensor, lateral: Tensor | None = None) -> Tensor:
        """Args:
            finest: (B, C, H/8, W/8) neck map; lateral: (B, C4, H/4, W/4) or None.

        Returns:
            (B, mask_dim, h, w) at stride :attr:`stride`.
        """
        x = self.reduce(finest)
        if self.lateral is not None:
            if lateral is None:
                raise ValueError("this mask branch was built for a stride-4 map; pass `lateral`")
            x = self.lateral(lateral) + F.interpolate(
                x, size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.out(self.tower(x))
