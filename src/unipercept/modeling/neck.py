"""From backbone maps to the encoder's input: projections, extra levels, masks, positions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.modeling.outputs import MultiScaleFeatures
from unipercept.modeling.position_encoding import SinePositionEncoding


def _projection(in_channels: int, hidden_dim: int, *, downsample: bool) -> nn.Sequential:
    conv = (
        nn.Conv2d(in_channels, hidden_dim, kernel_size=3, stride=2, padding=1)
        if downsample
        else nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
    )
    nn.init.xavier_uniform_(conv.weight, gain=1)
    nn.init.constant_(conv.bias, 0)
    return nn.Sequential(conv, nn.GroupNorm(32, hidden_dim))


class MultiScaleNeck(nn.Module):
    """Projects each backbone map to ``hidden_dim`` channels (1x1 conv + GroupNorm), adds
    coarser levels by stride-2 3x3 convolutions until there are ``num_levels``, and flattens
    them with their padding masks, sine position encodings and learned level embeddings.

    Args:
        in_channels: channels of the backbone maps, finest first.
        hidden_dim: model width C (a multiple of 32, for GroupNorm).
        num_levels: levels given to the encoder (>= len(in_channels)).
        position_encoding: encodes each level's valid mask; C // 2 features per axis.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        hidden_dim: int = 256,
        num_levels: int = 4,
        position_encoding: SinePositionEncoding | None = None,
    ) -> None:
        super().__init__()
        if num_levels < len(in_channels):
            raise ValueError(
                f"num_levels ({num_levels}) must be at least the number of backbone "
                f"maps ({len(in_channels)})"
            )
        if hidden_dim % 32:
            raise ValueError(f"hidden_dim must be a multiple of 32 for GroupNorm, got {hidden_dim}")
        projections = [_projection(c, hidden_dim, downsample=False) for c in in_channels]
        previous = in_channels[-1]
        for _ in range(num_levels - len(in_channels)):
            projections.append(_projection(previous, hidden_dim, downsample=True))
            previous = hidden_dim
        self.input_proj = nn.ModuleList(projections)
        self.num_backbone_levels = len(in_channels)
        self.hidden_dim = hidden_dim
        self.num_levels = num_levels
        self.position_encoding = position_encoding or SinePositionEncoding(
            num_features=hidden_dim // 2
        )
        self.level_embed = nn.Parameter(torch.empty(num_levels, hidden_dim))
        nn.init.normal_(self.level_embed)

    def forward(self, maps: Sequence[Tensor], valid: Tensor) -> MultiScaleFeatures:
        """Args:
            maps: backbone maps (B, C_i, H_i, W_i), finest first.
            valid: (B, H, W) bool, True on image pixels of the padded input.

        Returns:
            the flattened features of all levels.
        """
        dtype = maps[0].dtype
        # Positions and valid ratios in float32 at least: under bfloat16 autocast the maps are
        # bfloat16, in which pixel centres past 128 round to whole pixels.
        coordinate_dtype = torch.promote_types(dtype, torch.float32)
        projected, masks = [], []
        for level in range(self.num_levels):
            if level < self.num_backbone_levels:
                source = self.input_proj[level](maps[level])
            elif level == self.num_backbone_levels:
                source = self.input_proj[level](maps[-1])  # from the raw coarsest backbone map
            else:
                source = self.input_proj[level](projected[-1])
            projected.append(source)
            # Nearest-neighbour downsampling of the padding mask, as DETR does.
            masks.append(
                F.interpolate(valid[None].to(dtype), size=source.shape[-2:]).to(torch.bool)[0]
            )

        tokens, positions, valids, shapes = [], [], [], []
        for level, (source, mask) in enumerate(zip(projected, masks, strict=True)):
            height, width = source.shape[-2:]
            shapes.append((int(height), int(width)))
            position = self.position_encoding(mask, dtype=coordinate_dtype)  # (B, C, H, W)
            position = position.to(source.dtype)
            tokens.append(source.flatten(2).transpose(1, 2))  # (B, HW, C)
            positions.append(
                position.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
            )
            valids.append(mask.flatten(1))  # (B, HW)
        token_tensor = torch.cat(tokens, 1)  # (B, S, C)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=token_tensor.device)
        level_start_index = torch.cat(
            (spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1])
        )
        valid_ratios = torch.stack(
            [_valid_ratio(m, coordinate_dtype) for m in masks], 1
        )  # (B, L, 2)
        return MultiScaleFeatures(
            tokens=token_tensor,
            position=torch.cat(positions, 1),
            valid=torch.cat(valids, 1),
            spatial_shapes=spatial_shapes,
            level_start_index=level_start_index,
            valid_ratios=valid_ratios,
            shapes=tuple(shapes),
            maps=tuple(projected),
        )


def _valid_ratio(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, 2) fraction (w, h) of a (B, H, W) level that the image covers."""
    _, height, width = mask.shape
    valid_height = mask[:, :, 0].sum(1).to(dtype) / height
    valid_width = mask[:, 0, :].sum(1).to(dtype) / width
    return torch.stack([valid_width, valid_height], -1)
