"""UNINEXT's mask branch: CondInst-style dynamic convolutions on encoder features.

A small convolutional head (:class:`MaskHeadSmallConv`) turns the encoder memory of the three
finest levels (P3-P5, not backbone features) into an 8-channel stride-8 map shared by all
queries. For every query a controller MLP emits the 169 weights of three 1x1 convolutions
(10 -> 8 -> 8 -> 1) that run on that map plus two channels of pixel offsets from the query's
centre, giving one mask logit map per query; ``aligned_bilinear`` then doubles it to stride 4.

Parameter names equal UNINEXT's relative to ``detr.`` (``mask_head.*``, ``controller.*``;
``projects/UNINEXT/uninext/models/ddetrs_dn.py:53-84``), so
``UninextMaskBranch.load_state_dict(strip_prefix(sd, "detr."))`` works on those keys.

Which inputs UNINEXT feeds (``ddetrs_dn.py:468-479``, at inference):

- controller input: ``hs[-1]``, the last decoder layer's output;
- query centre: ``inter_references[-2][..., :2]``, the reference box the last decoder layer
  received as input (the second-to-last layer's refined box, before its detach; in
  :class:`~unipercept.modeling.outputs.DecoderStates` terms ``reference_points[-2]``), not the
  final predicted box;
- pixels: that centre times each image's own ``(w, h)`` before padding (``image_sizes``), not
  the padded batch size. The reference boxes are normalised to the valid region of each image,
  so this places the centre in input pixels of the padded grid. UNINEXT then concatenates all
  images' queries into one group of ``B * Q`` instances (hence its recorded shape
  ``(1, B * Q, 2)``); here the batch axis is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.modeling.heads import MLP

#: Channels of the dynamic convolutions: (mask channels + 2 coordinates) -> 8 -> 8 -> 1.
DYNAMIC_CHANNELS = 8


def num_dynamic_params(mask_dim: int = 8, channels: int = DYNAMIC_CHANNELS) -> int:
    """Parameters of the three dynamic 1x1 convolutions: 169 for UNINEXT's 8 mask channels."""
    weights = (mask_dim + 2) * channels + channels * channels + channels
    biases = channels + channels + 1
    return weights + biases


def aligned_bilinear(x: Tensor, factor: int) -> Tensor:
    """Upsample by an integer ``factor`` so that output pixel centres stay aligned with the input
    grid (AdelaiDet/CondInst), with the same operations as UNINEXT (``ddetrs_dn.py:1174``).

    The map is edge-padded by one pixel at the right/bottom, resized with ``align_corners=True``
    to ``factor * size + 1`` (an exact 1/factor step between samples), shifted by ``factor // 2``
    pixels with edge padding at the left/top, and cropped back to ``factor * size``.

    Args:
        x: (N, C, H, W).
        factor: integer >= 1.

    Returns:
        (N, C, factor * H, factor * W).
    """
    if x.dim() != 4:
        raise ValueError(f"expected a 4-d tensor, got shape {tuple(x.shape)}")
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    factor = int(factor)
    if factor == 1:
        return x
    height, width = x.shape[-2:]
    out_height, out_width = factor * height + 1, factor * width + 1
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")  # (N, C, H + 1, W + 1)
    x = F.interpolate(x, size=(out_height, out_width), mode="bilinear", align_corners=True)
    shift = factor // 2
    x = F.pad(x, (shift, 0, shift, 0), mode="replicate")
    return x[:, :, : out_height - 1, : out_width - 1]


def relative_coordinates(
    reference_points_px: Tensor, height: int, width: int, stride: int
) -> Tensor:
    """Offsets from each query centre to every mask-feature pixel, in raw input pixels.

    UNINEXT does not normalise them (``ddetrs_dn.py:772-784``) and takes ``centre - location``
    (not ``location - centre``); a pixel's location is ``index * stride + stride // 2``.

    Args:
        reference_points_px: (B, Q, 2) query centres (x, y) in input pixels.
        height, width: size of the stride-``stride`` mask-feature grid.
        stride: input pixels per mask-feature pixel.

    Returns:
        (B, Q, 2, height, width) offsets (x, y).
    """
    device, dtype = reference_points_px.device, reference_points_px.dtype
    xs = torch.arange(width, device=device, dtype=dtype) * stride + stride // 2  # (W,)
    ys = torch.arange(height, device=device, dtype=dtype) * stride + stride // 2  # (H,)
    offset_x = reference_points_px[..., 0, None, None] - xs.view(1, 1, 1, width)  # (B, Q, 1, W)
    offset_y = reference_points_px[..., 1, None, None] - ys.view(1, 1, height, 1)  # (B, Q, H, 1)
    shape = (*reference_points_px.shape[:2], height, width)
    return torch.stack((offset_x.expand(shape), offset_y.expand(shape)), 2)  # (B, Q, 2, H, W)


def split_dynamic_params(
    params: Tensor, in_channels: int, channels: int = DYNAMIC_CHANNELS
) -> tuple[list[Tensor], list[Tensor]]:
    """Cut the controller output into the dynamic convolutions' weights and biases.

    The layout is all weights first, then all biases (``parse_dynamic_params``,
    ``ddetrs_dn.py:1148``); each weight is row-major (out_channels, in_channels).

    Args:
        params: (..., P) controller output.
        in_channels: input channels of the first convolution (mask channels + 2).

    Returns:
        weights [(..., 8, in_channels), (..., 8, 8), (..., 1, 8)] and
        biases [(..., 8), (..., 8), (..., 1)].
    """
    shapes = [(channels, in_channels), (channels, channels), (1, channels)]
    sizes = [o * i for o, i in shapes] + [o for o, _ in shapes]
    if params.shape[-1] != sum(sizes):
        raise ValueError(f"expected {sum(sizes)} dynamic parameters, got {params.shape[-1]}")
    parts = params.split(sizes, dim=-1)
    lead = params.shape[:-1]
    weights = [p.reshape(*lead, *s) for p, s in zip(parts[:3], shapes, strict=True)]
    return weights, list(parts[3:])


def mask_logits(
    mask_feats: Tensor,
    dynamic_params: Tensor,
    reference_points_px: Tensor,
    *,
    mask_stride: int = 8,
    out_stride: int = 4,
) -> Tensor:
    """Per-query mask logits from the shared mask features (``dynamic_mask_with_coords``).

    Args:
        mask_feats: (B, D, H/8, W/8) mask-branch features of the padded batch (D = 8).
        dynamic_params: (B, Q, P) controller output (P = 169 for D = 8).
        reference_points_px: (B, Q, 2) query centres (x, y) in input pixels (see the module
            docstring for which centre UNINEXT uses).
        mask_stride: input pixels per mask-feature pixel.
        out_stride: input pixels per output pixel; must divide ``mask_stride``.

    Returns:
        (B, Q, 1, H/out_stride, W/out_stride) logits on the padded batch's grid.
    """
    if mask_stride % out_stride:
        raise ValueError(f"out_stride {out_stride} must divide mask_stride {mask_stride}")
    batch, mask_dim, height, width = mask_feats.shape
    num_queries = dynamic_params.shape[1]
    weights, biases = split_dynamic_params(dynamic_params, mask_dim + 2)
    # UNINEXT casts the offsets to float32 (`relative_coords.float()`); here they follow
    # the features' dtype.
    coords = relative_coordinates(
        reference_points_px.to(mask_feats.dtype), height, width, mask_stride
    )
    feats = mask_feats[:, None].expand(batch, num_queries, mask_dim, height, width)
    x = torch.cat((coords, feats), 2).flatten(3)  # (B, Q, 2 + D, HW): offsets first
    x = x.flatten(0, 1)  # (B*Q, 2 + D, HW)
    for index, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
        # The bias added inside the product and the ReLU in place: at 900 queries x 8
        # channels x the stride-8 map these are the largest tensors of a forward.
        x = torch.baddbmm(bias.flatten(0, 1)[..., None], weight.flatten(0, 1), x)  # (B*Q, out, HW)
        if index < len(weights) - 1:
            x = x.relu_()
    x = x.view(batch * num_queries, 1, height, width)
    x = aligned_bilinear(x, mask_stride // out_stride)  # (B*Q, 1, h, w) at out_stride
    return x.view(batch, num_queries, 1, *x.shape[-2:])


def memory_to_maps(
    memory: Tensor, shapes: list[tuple[int, int]] | tuple[tuple[int, int], ...]
) -> list[Tensor]:
    """Cut the flattened encoder memory back into per-level maps.

    Args:
        memory: (B, S, C) encoder output, levels concatenated finest first (S >= sum h*w).
        shapes: (h, w) of the leading levels to return.

    Returns:
        one (B, C, h, w) map per entry of ``shapes``.
    """
    batch, _, channels = memory.shape
    maps, start = [], 0
    for height, width in shapes:
        level = memory[:, start : start + height * width]  # (B, hw, C)
        maps.append(level.transpose(1, 2).reshape(batch, channels, height, width))
        start += height * width
    return maps


def reference_points_to_pixels(reference_points: Tensor, image_sizes: Tensor) -> Tensor:
    """Scale normalised centres by each image's own size, as UNINEXT does for the mask head.

    Args:
        reference_points: (B, Q, >=2) normalised boxes or points; only (x, y) is used.
        image_sizes: (B, 2) (height, width) of each image before padding.

    Returns:
        (B, Q, 2) centres (x, y) in input pixels.
    """
    scale = image_sizes.flip(-1).to(reference_points)  # (B, 2) (w, h)
    return reference_points[..., :2] * scale[:, None]


class MaskHeadSmallConv(nn.Module):
    """UNINEXT's mask feature head: a top-down pass over P5 -> P4 -> P3, then 256 -> 64 -> 8.

    ``conv(P5)``, nearest-upsampled and added to P4, ``conv``, nearest-upsampled and added to
    P3, ``conv`` (named ``jia_dcn``, a plain convolution despite the name), then ``lay1`` and
    ``lay2``; every convolution is 3x3 and followed by ReLU, with no normalisation
    (``ddetrs_dn.py:975-1031``).

    Args:
        hidden_dim: channels of the encoder memory.
        mid_channels: output channels of ``lay1`` (UNINEXT: hidden_dim // 4).
        mask_dim: output channels (UNINEXT: hidden_dim // 32).
    """

    def __init__(self, *, hidden_dim: int = 256, mid_channels: int = 64, mask_dim: int = 8) -> None:
        super().__init__()
        self.lay1 = nn.Conv2d(hidden_dim, mid_channels, 3, padding=1)
        self.lay2 = nn.Conv2d(mid_channels, mask_dim, 3, padding=1)
        self.lay3 = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1)
        self.lay4 = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1)
        self.jia_dcn = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1)
        self.mask_dim = mask_dim

    def forward(self, maps: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        """Args:
            maps: the three finest memory levels (B, C, h_l, w_l), finest (stride 8) first.

        Returns:
            (B, mask_dim, h_0, w_0) mask features at stride 8.
        """
        p3, p4, p5 = maps
        x = F.relu(self.lay3(p5))
        x = F.relu(self.lay4(p4 + F.interpolate(x, size=p4.shape[-2:], mode="nearest")))
        x = F.relu(self.jia_dcn(p3 + F.interpolate(x, size=p3.shape[-2:], mode="nearest")))
        x = F.relu(self.lay1(x))
        return F.relu(self.lay2(x))


class UninextMaskBranch(nn.Module):
    """The mask head and the controller of dynamic convolution parameters.

    Args:
        hidden_dim: model width.
        mask_dim: mask feature channels.
        mask_stride: stride of the mask features (the finest memory level).
        out_stride: stride of the returned logits.
    """

    def __init__(
        self, *, hidden_dim: int = 256, mask_dim: int = 8, mask_stride: int = 8, out_stride: int = 4
    ) -> None:
        super().__init__()
        self.mask_head = MaskHeadSmallConv(
            hidden_dim=hidden_dim, mid_channels=hidden_dim // 4, mask_dim=mask_dim
        )
        self.controller = MLP(
            input_dim=hidden_dim,
            hidden_dim=hidden_dim,
            output_dim=num_dynamic_params(mask_dim),
            num_layers=3,
        )
        self.mask_stride = mask_stride
        self.out_stride = out_stride

    def forward(
        self,
        memory_maps: list[Tensor] | tuple[Tensor, ...],
        hidden_last: Tensor,
        reference_points_px: Tensor,
    ) -> Tensor:
        """Args:
            memory_maps: encoder memory of P3, P4, P5 as (B, C, h_l, w_l) maps, finest first
                (:func:`memory_to_maps`); further levels are ignored.
            hidden_last: (B, Q, C) output of the last decoder layer.
            reference_points_px: (B, Q, 2) centres (x, y) in input pixels
                (:func:`reference_points_to_pixels` of the last layer's input reference).

        Returns:
            (B, Q, 1, H/out_stride, W/out_stride) mask logits on the padded batch's grid.
        """
        feats = self.mask_head(memory_maps[:3])  # (B, 8, H/8, W/8)
        params = self.controller(hidden_last)  # (B, Q, 169)
        return mask_logits(
            feats,
            params,
            reference_points_px,
            mask_stride=self.mask_stride,
            out_stride=self.out_stride,
        )
