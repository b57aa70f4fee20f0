"""RoIAlign (He et al., Mask R-CNN) built on ``grid_sample``, with torchvision's semantics.

Each output bin averages ``grid_h x grid_w`` bilinear samples of the feature map. A sample more
than one pixel outside the map contributes 0; a sample within one pixel of the border reads the
border value. Both coordinate conventions are supported:

- ``aligned=True``: pixel ``i`` covers ``[i, i+1)``, so box coordinates are shifted by -0.5
  before sampling (Detectron2's "ROIAlignV2", ONNX ``half_pixel``).
- ``aligned=False``: the legacy convention of the original Caffe2 op (ONNX
  ``output_half_pixel``); boxes smaller than one pixel are grown to one pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# grid_sample is run on chunks of RoIs whose samples times channels stay under this many
# elements, so large adaptive sampling grids do not exhaust memory.
_MAX_CHUNK_ELEMENTS = 1 << 25


def _rois_from(boxes: Tensor | Sequence[Tensor], num_images: int, dtype: torch.dtype) -> Tensor:
    if isinstance(boxes, Tensor):
        if boxes.ndim != 2 or boxes.shape[1] != 5:
            raise ValueError(
                "boxes must be a (K, 5) tensor of (batch_index, x1, y1, x2, y2) or a list of "
                f"(K_i, 4) tensors, got shape {tuple(boxes.shape)}"
            )
        rois = boxes
    else:
        boxes = list(boxes)
        if len(boxes) != num_images:
            raise ValueError(f"boxes is a list of {len(boxes)} tensors for {num_images} images")
        parts = []
        for index, per_image in enumerate(boxes):
            if per_image.ndim != 2 or per_image.shape[1] != 4:
                raise ValueError(
                    f"boxes[{index}] must have shape (K, 4), got {tuple(per_image.shape)}"
                )
            batch_index = per_image.new_full((per_image.shape[0], 1), index)
            parts.append(torch.cat((batch_index, per_image), dim=1))
        rois = torch.cat(parts, dim=0) if parts else torch.zeros((0, 5))
    if not rois.is_floating_point():
        raise ValueError(f"boxes must be floating point, got {rois.dtype}")
    if not bool(torch.isfinite(rois).all()):
        raise ValueError("boxes hold non-finite coordinates (NaN or inf)")
    batch_index = rois[:, 0]
    if rois.shape[0] and (
        bool((batch_index != batch_index.round()).any())
        or int(batch_index.min()) < 0
        or int(batch_index.max()) >= num_images
    ):
        raise ValueError(
            f"box batch indices must be integers in [0, {num_images}), got "
            f"{sorted(set(batch_index.tolist()))}"
        )
    return rois.to(dtype)


def _sample_positions(
    start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int
) -> tuple[Tensor, Tensor]:
    """Sample coordinates along one axis for K RoIs.

    Returns:
        positions: (K, pooled, G) coordinates, G = max grid over the RoIs.
        used: (K, G) bool, True for the first ``grid[k]`` samples of each bin.
    """
    max_grid = int(grid.max())
    steps = torch.arange(max_grid, device=start.device, dtype=start.dtype)  # (G,)
    bins = torch.arange(pooled, device=start.device, dtype=start.dtype)  # (P,)
    grid_f = grid.to(start.dtype).clamp(min=1)[:, None, None]  # (K, 1, 1)
    positions = (
        start[:, None, None]
        + bins[None, :, None] * bin_size[:, None, None]
        + (steps[None, None, :] + 0.5) * bin_size[:, None, None] / grid_f
    )  # (K, P, G)
    used = steps[None, :] < grid[:, None]  # (K, G)
    return positions, used


def _roi_align_one_image(
    features: Tensor,
    rois: Tensor,
    pooled: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    spatial_scale: float,
) -> Tensor:
    """RoIAlign of K RoIs on one (C, H, W) feature map -> (K, C, PH, PW)."""
    channels, height, width = features.shape
    pooled_h, pooled_w = pooled
    offset = 0.5 if aligned else 0.0
    start_w = rois[:, 1] * spatial_scale - offset  # (K,)
    start_h = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - start_w
    roi_h = rois[:, 4] * spatial_scale - offset - start_h
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
    if sampling_ratio > 0:
        grid_h = torch.full_like(roi_h, sampling_ratio, dtype=torch.int64)
        grid_w = torch.full_like(roi_w, sampling_ratio, dtype=torch.int64)
    else:
        grid_h = torch.ceil(roi_h / pooled_h).to(torch.int64).clamp(min=0)
        grid_w = torch.ceil(roi_w / pooled_w).to(torch.int64).clamp(min=0)
    if int(grid_h.max()) == 0 or int(grid_w.max()) == 0:
        return features.new_zeros((rois.shape[0], channels, pooled_h, pooled_w))

    ys, used_y = _sample_positions(start_h, bin_h, grid_h, pooled_h)  # (K, PH, Gh), (K, Gh)
    xs, used_x = _sample_positions(start_w, bin_w, grid_w, pooled_w)  # (K, PW, Gw), (K, Gw)
    num_rois, _, samples_h = ys.shape
    samples_w = xs.shape[2]
    # Samples more than a pixel outside the map read 0; the rest read a border-clamped bilinear
    # value, which grid_sample's "border" padding gives.
    weight_y = (used_y[:, None, :] & (ys >= -1.0) & (ys <= height)).to(features.dtype)  # (K,PH,Gh)
    weight_x = (used_x[:, None, :] & (xs >= -1.0) & (xs <= width)).to(features.dtype)  # (K,PW,Gw)
    norm_y = ys / max(height - 1, 1) * 2 - 1  # align_corners=True: -1 and 1 are pixel centres
    norm_x = xs / max(width - 1, 1) * 2 - 1
    grid = torch.stack(
        (
            norm_x[:, None, None, :, :].expand(-1, pooled_h, samples_h, -1, -1),
            norm_y[:, :, :, None, None].expand(-1, -1, -1, pooled_w, samples_w),
        ),
        dim=-1,
    )  # (K, PH, Gh, PW, Gw, 2)
    grid = grid.reshape(1, num_rois * pooled_h * samples_h, pooled_w * samples_w, 2)
    sampled = F.grid_sample(
        features[None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )  # (1, C, K*PH*Gh, PW*Gw)
    sampled = sampled.view(channels, num_rois, pooled_h, samples_h, pooled_w, samples_w)
    weights = weight_y[:, :, :, None, None] * weight_x[:, None, None, :, :]  # (K,PH,Gh,PW,Gw)
    summed = (sampled * weights[None]).sum(dim=(3, 5))  # (C, K, PH, PW)
    count = (grid_h * grid_w).clamp(min=1).to(features.dtype)  # (K,)
    return (summed / count[None, :, None, None]).permute(1, 0, 2, 3)  # (K, C, PH, PW)


def roi_align(
    features: Tensor,
    boxes: Tensor | Sequence[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Pools a fixed-size feature for each box (RoIAlign), differentiable in ``features``.

    Args:
        features: (N, C, H, W) float feature maps.
        boxes: (K, 5) rows ``(batch_index, x1, y1, x2, y2)``, or a list of N (K_i, 4) xyxy
            tensors, in the coordinates of the input image.
        output_size: ``(PH, PW)`` or one int for both.
        spatial_scale: factor from box coordinates to feature-map coordinates (1 / stride).
        sampling_ratio: samples per bin along each axis; <= 0 picks ``ceil(roi_size / bins)``
            per RoI, as torchvision does.
        aligned: half-pixel box coordinates (see the module docstring).

    Returns:
        (K, C, PH, PW) pooled features, RoIs in the order given.
    """
    if not isinstance(features, Tensor) or features.ndim != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must have shape (N, C, H, W), got {shape}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got {features.dtype}")
    pooled = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if len(pooled) != 2 or min(pooled) <= 0:
        raise ValueError(f"output_size must be a positive int or (h, w), got {output_size!r}")
    if not (math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"spatial_scale must be a positive number, got {spatial_scale}")
    rois = _rois_from(boxes, features.shape[0], features.dtype).to(features.device)  # (K, 5)
    channels = features.shape[1]
    output = features.new_zeros((rois.shape[0], channels, *pooled))  # (K, C, PH, PW)
    for image_index in range(features.shape[0]):
        indices = torch.nonzero(rois[:, 0] == image_index).flatten()
        if indices.numel() == 0:
            continue
        image_rois = rois[indices]
        # Chunks of RoIs with similar grid sizes keep the padded sample grid small.
        extent = torch.maximum(
            image_rois[:, 3] - image_rois[:, 1], image_rois[:, 4] - image_rois[:, 2]
        )
        order = torch.argsort(extent)
        indices, image_rois = indices[order], image_rois[order]
        if sampling_ratio > 0:
            samples_per_roi = pooled[0] * pooled[1] * sampling_ratio**2
        else:
            grid = math.ceil(float(extent.max()) * spatial_scale / min(pooled)) + 1
            samples_per_roi = pooled[0] * pooled[1] * grid**2
        chunk = max(1, _MAX_CHUNK_ELEMENTS // max(samples_per_roi * channels, 1))
        for begin in range(0, indices.numel(), chunk):
            pooled_features = _roi_align_one_image(
                features[image_index],
                image_rois[begin : begin + chunk],
                pooled,
                sampling_ratio,
                aligned,
                spatial_scale,
            )
            output = output.index_copy(0, indices[begin : begin + chunk], pooled_features)
    return output
