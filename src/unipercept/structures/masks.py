"""Instance masks: COCO run-length encoding (through pycocotools), polygons, pasting, resizing.

Dense masks are ``(N, H, W)`` bool tensors. :class:`RLEMasks` holds the same information as
COCO RLE dicts (``{"size": [H, W], "counts": str}``), which is what result files and
ground-truth json carry and what keeps long videos small in memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import torch
import torch.nn.functional as F
from torch import Tensor

RLE = dict[str, Any]


def _as_numpy_masks(masks: Tensor | np.ndarray, name: str = "masks") -> np.ndarray:
    array = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got {tuple(array.shape)}")
    if array.dtype != np.bool_:
        raise ValueError(f"{name} must be boolean, got {array.dtype}")
    return array


def _json_rle(rle: RLE) -> RLE:
    counts = rle["counts"]
    return {
        "size": [int(s) for s in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def _check_rles(rles: Sequence[RLE], name: str = "rles") -> list[RLE]:
    checked = []
    for index, rle in enumerate(rles):
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(
                f"{name}[{index}] must be a dict with 'size' and 'counts', got {rle!r}"
            )
        if isinstance(rle["counts"], list):
            # Uncompressed RLE (COCO crowd annotations): compress it.
            height, width = rle["size"]
            rle = mask_utils.frPyObjects(rle, height, width)
        checked.append(_json_rle(rle))
    return checked


def rle_encode(masks: Tensor | np.ndarray) -> list[RLE]:
    """Encodes (N, H, W) bool masks as COCO compressed RLE dicts with ``str`` counts."""
    array = _as_numpy_masks(masks)
    if array.shape[0] == 0:
        return []
    fortran = np.asfortranarray(array.transpose(1, 2, 0).astype(np.uint8))  # (H, W, N)
    return [_json_rle(rle) for rle in mask_utils.encode(fortran)]


def rle_decode(rles: Sequence[RLE], image_size: tuple[int, int] | None = None) -> Tensor:
    """Decodes COCO RLE dicts (compressed or uncompressed) into (N, H, W) bool masks.

    Args:
        rles: N RLE dicts of one size.
        image_size: ``(H, W)`` used when ``rles`` is empty, and checked otherwise.
    """
    rles = _check_rles(rles)
    if not rles:
        if image_size is None:
            raise ValueError("rle_decode of an empty list needs image_size")
        return torch.zeros((0, *image_size), dtype=torch.bool)
    sizes = {tuple(rle["size"]) for rle in rles}
    if len(sizes) != 1 or (image_size is not None and sizes != {tuple(image_size)}):
        raise ValueError(f"rles have sizes {sorted(sizes)}, expected one size {image_size}")
    with warnings.catch_warnings():
        # pycocotools 2.0.x's decode trips numpy 2's __array__(copy=...) deprecation; harmless.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        decoded = mask_utils.decode(rles)  # (H, W, N) uint8
    return torch.from_numpy(np.ascontiguousarray(decoded.transpose(2, 0, 1))).bool()


def rle_area(rles: Sequence[RLE]) -> Tensor:
    """(N,) float64 pixel counts of RLE masks."""
    rles = _check_rles(rles)
    return torch.as_tensor(mask_utils.area(rles) if rles else [], dtype=torch.float64)


def rle_iou(
    rles1: Sequence[RLE], rles2: Sequence[RLE], iscrowd: Sequence[bool] | None = None
) -> Tensor:
    """Pairwise IoU of RLE masks, as COCO computes it.

    Args:
        rles1: N detections.
        rles2: M ground truths.
        iscrowd: M flags; for a crowd ground truth the union is the detection's area alone.

    Returns:
        (N, M) float64 IoU.
    """
    rles1, rles2 = _check_rles(rles1, "rles1"), _check_rles(rles2, "rles2")
    flags = [int(bool(c)) for c in iscrowd] if iscrowd is not None else [0] * len(rles2)
    if len(flags) != len(rles2):
        raise ValueError(f"iscrowd has {len(flags)} flags for {len(rles2)} masks in rles2")
    if not rles1 or not rles2:
        return torch.zeros((len(rles1), len(rles2)), dtype=torch.float64)
    return torch.as_tensor(np.asarray(mask_utils.iou(rles1, rles2, flags)), dtype=torch.float64)


def mask_iou(masks1: Tensor, masks2: Tensor) -> Tensor:
    """Pairwise IoU of dense bool masks, (N, H, W) x (M, H, W) -> (N, M); empty unions give 0."""
    if masks1.shape[1:] != masks2.shape[1:]:
        raise ValueError(
            f"mask sizes differ: {tuple(masks1.shape[1:])} vs {tuple(masks2.shape[1:])}"
        )
    flat1 = masks1.flatten(1).float()  # (N, H*W)
    flat2 = masks2.flatten(1).float()  # (M, H*W)
    inter = flat1 @ flat2.T  # (N, M)
    union = flat1.sum(1)[:, None] + flat2.sum(1)[None, :] - inter  # (N, M)
    return torch.where(union > 0, inter / union.clamp(min=1), 0.0)


def polygons_to_rle(polygons: Sequence[Sequence[float]], image_size: tuple[int, int]) -> RLE:
    """Merges the COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` of one object into one RLE."""
    height, width = image_size
    for index, polygon in enumerate(polygons):
        if len(polygon) < 6 or len(polygon) % 2:
            raise ValueError(
                f"polygons[{index}] must hold an even number (>= 6) of coordinates, "
                f"got {len(polygon)}"
            )
        if not np.isfinite(np.asarray(polygon, dtype=np.float64)).all():
            raise ValueError(f"polygons[{index}] holds non-finite coordinates")
    if not polygons:
        return rle_encode(np.zeros((1, height, width), dtype=bool))[0]
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return _json_rle(mask_utils.merge(rles))


def polygons_to_mask(polygons: Sequence[Sequence[float]], image_size: tuple[int, int]) -> Tensor:
    """Rasterises the COCO polygons of one object into an (H, W) bool mask."""
    return rle_decode([polygons_to_rle(polygons, image_size)])[0]


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, image_size: tuple[int, int], threshold: float | None = 0.5
) -> Tensor:
    """Pastes box-local masks (e.g. a mask head's 28x28 output) into the full image.

    Each mask is stretched over its box with bilinear interpolation, sampled at pixel centres;
    the image outside the box is 0.

    Args:
        masks: (N, Mh, Mw) float probabilities in [0, 1], one per box.
        boxes: (N, 4) xyxy in image pixels.
        image_size: ``(H, W)`` of the image.
        threshold: masks are binarised with ``>= threshold``; ``None`` returns probabilities.

    Returns:
        (N, H, W) bool masks, or float when ``threshold`` is None.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, Mh, Mw), got {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must have shape ({masks.shape[0]}, 4), got {tuple(boxes.shape)}")
    height, width = image_size
    if masks.shape[0] == 0:
        empty = torch.zeros((0, height, width), device=masks.device)
        return empty.bool() if threshold is not None else empty
    boxes = boxes.to(torch.float32)
    x0, y0, x1, y1 = boxes.unbind(1)  # (N,) each
    xs = torch.arange(width, device=masks.device, dtype=torch.float32) + 0.5  # (W,)
    ys = torch.arange(height, device=masks.device, dtype=torch.float32) + 0.5  # (H,)
    # Normalised grid_sample coordinates (align_corners=False): -1 and 1 are the box edges.
    grid_x = (xs[None, :] - x0[:, None]) / (x1 - x0).clamp(min=1e-6)[:, None] * 2 - 1  # (N, W)
    grid_y = (ys[None, :] - y0[:, None]) / (y1 - y0).clamp(min=1e-6)[:, None] * 2 - 1  # (N, H)
    grid = torch.stack(
        (
            grid_x[:, None, :].expand(-1, height, -1),
            grid_y[:, :, None].expand(-1, -1, width),
        ),
        dim=3,
    )  # (N, H, W, 2)
    pasted = F.grid_sample(
        masks[:, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[:, 0]  # (N, H, W)
    return pasted >= threshold if threshold is not None else pasted


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Resizes (N, H, W) masks to ``size = (h, w)`` with bilinear interpolation (half-pixel
    centres, no antialiasing, as OpenCV's INTER_LINEAR). Bool masks come back thresholded at
    0.5; float masks come back as floats.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    resized = F.interpolate(
        masks[:, None].float(), size=size, mode="bilinear", align_corners=False
    )[:, 0]  # (N, h, w)
    return resized >= 0.5 if masks.dtype == torch.bool else resized.to(masks.dtype)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight xyxy boxes (pixel edges) of (N, H, W) bool masks; an empty mask gives zeros."""
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {tuple(masks.shape)}")
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32, device=masks.device)
    rows = masks.any(dim=2)  # (N, H)
    cols = masks.any(dim=1)  # (N, W)
    for index in torch.nonzero(rows.any(dim=1)).flatten().tolist():
        ys = torch.nonzero(rows[index]).flatten()
        xs = torch.nonzero(cols[index]).flatten()
        boxes[index] = torch.stack((xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)).float()
    return boxes


class RLEMasks:
    """N instance masks of one image size, held as COCO compressed RLE.

    Example:
        >>> dense = torch.zeros(2, 4, 5, dtype=torch.bool); dense[0, 1:3, 1:4] = True
        >>> rle = RLEMasks.from_dense(dense)
        >>> rle.area()
        tensor([6., 0.], dtype=torch.float64)
        >>> bool((rle.decode() == dense).all())
        True
    """

    def __init__(self, rles: Sequence[RLE], image_size: tuple[int, int]) -> None:
        self.rles = _check_rles(rles)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        for index, rle in enumerate(self.rles):
            if tuple(rle["size"]) != self.image_size:
                raise ValueError(
                    f"rles[{index}] has size {tuple(rle['size'])}, expected {self.image_size}"
                )

    @classmethod
    def from_dense(cls, masks: Tensor) -> RLEMasks:
        """Encodes (N, H, W) bool masks."""
        return cls(rle_encode(masks), (masks.shape[1], masks.shape[2]))

    def decode(self) -> Tensor:
        """(N, H, W) bool masks."""
        return rle_decode(self.rles, self.image_size)

    def area(self) -> Tensor:
        """(N,) pixel counts."""
        return rle_area(self.rles)

    def iou(self, other: RLEMasks, iscrowd: Sequence[bool] | None = None) -> Tensor:
        """(N, M) IoU against ``other``'s M masks (see :func:`rle_iou`)."""
        return rle_iou(self.rles, other.rles, iscrowd)

    def to_boxes(self) -> Tensor:
        """(N, 4) xyxy tight boxes."""
        if not self.rles:
            return torch.zeros((0, 4))
        xywh = torch.as_tensor(mask_utils.toBbox(self.rles), dtype=torch.float32)  # (N, 4)
        return torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), dim=1)

    def __len__(self) -> int:
        return len(self.rles)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> RLEMasks:
        if isinstance(index, int):
            return RLEMasks([self.rles[index]], self.image_size)
        if isinstance(index, slice):
            return RLEMasks(self.rles[index], self.image_size)
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise IndexError(f"bool index of shape {tuple(index.shape)} for {len(self)} masks")
            index = torch.nonzero(index).flatten()
        return RLEMasks([self.rles[i] for i in index.tolist()], self.image_size)

    def __repr__(self) -> str:
        return f"RLEMasks(num_masks={len(self)}, image_size={self.image_size})"

    @staticmethod
    def cat(masks_list: Sequence[RLEMasks]) -> RLEMasks:
        if not masks_list:
            raise ValueError("RLEMasks.cat needs at least one RLEMasks")
        sizes = {m.image_size for m in masks_list}
        if len(sizes) != 1:
            raise ValueError(f"RLEMasks.cat got masks of several image sizes: {sorted(sizes)}")
        return RLEMasks([rle for m in masks_list for rle in m.rles], masks_list[0].image_size)
