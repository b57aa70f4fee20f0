"""Axis-aligned boxes: format conversions, areas, clipping, pairwise IoU/GIoU, box masks.

Conventions used across unipercept:

- ``xyxy``: ``(x1, y1, x2, y2)``, corners in pixels, ``x2 >= x1`` for a valid box. This is the
  format of :class:`Boxes` and of ``Instances.boxes``.
- ``xywh``: ``(x, y, w, h)``, top-left corner plus size (COCO json, MOTChallenge, LaSOT).
- ``cxcywh``: ``(cx, cy, w, h)``, centre plus size; the model predicts it normalised to [0, 1].

A box covers the continuous region ``[x1, x2] x [y1, y2]``; its area is ``(x2-x1)*(y2-y1)``
with no "+1" (as COCO and torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
_FORMATS = ("xyxy", "xywh", "cxcywh")


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    if not isinstance(boxes, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, 4), got {type(boxes).__name__}"
        )
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}")


def box_convert(boxes: Tensor, in_fmt: BoxFormat, out_fmt: BoxFormat) -> Tensor:
    """Converts boxes between ``xyxy``, ``xywh`` and ``cxcywh``.

    Args:
        boxes: (..., 4) floating tensor in ``in_fmt``.
        in_fmt: format of ``boxes``.
        out_fmt: format of the result.

    Returns:
        (..., 4) tensor in ``out_fmt``; a new tensor even when the formats agree.
    """
    for arg, fmt in (("in_fmt", in_fmt), ("out_fmt", out_fmt)):
        if fmt not in _FORMATS:
            raise ValueError(f"{arg} must be one of {_FORMATS}, got {fmt!r}")
    _check_boxes(boxes)
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        xyxy = (a, b, a + c, b + d)
    elif in_fmt == "cxcywh":
        xyxy = (a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d)
    else:
        xyxy = (a, b, c, d)
    x1, y1, x2, y2 = xyxy
    if out_fmt == "xywh":
        return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)
    if out_fmt == "cxcywh":
        return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def normalize_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """(N, 4) xyxy pixel boxes -> (N, 4) cxcywh divided by the image's (w, h, w, h), the
    form DETR predicts and its losses compare."""
    height, width = image_size
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes, "xyxy", "cxcywh") / scale


def denormalize_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`normalize_boxes`: (..., 4) normalised cxcywh -> xyxy pixels."""
    height, width = image_size
    scale = boxes.new_tensor([width, height, width, height])
    return box_convert(boxes * scale, "cxcywh", "xyxy")


def box_area(boxes: Tensor) -> Tensor:
    """Areas of (..., 4) xyxy boxes, (...); degenerate (inverted) boxes count as 0."""
    _check_boxes(boxes)
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clips (..., 4) xyxy boxes to an image of ``image_size = (height, width)``."""
    _check_boxes(boxes)
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def _inter_union(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    area1 = box_area(boxes1)  # (N,)
    area2 = box_area(boxes2)  # (M,)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    return inter, union


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union of xyxy boxes.

    Args:
        boxes1: (N, 4) xyxy.
        boxes2: (M, 4) xyxy.

    Returns:
        (N, M) IoU; a pair whose union is empty (two zero-area boxes) has IoU 0, not NaN.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    inter, union = _inter_union(boxes1, boxes2)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al., 2019) of xyxy boxes, in [-1, 1].

    Args:
        boxes1: (N, 4) xyxy with ``x2 >= x1`` and ``y2 >= y1``.
        boxes2: (M, 4) xyxy, same condition.

    Returns:
        (N, M) GIoU. Inverted boxes would give meaningless values (and blow up a GIoU loss), so
        they raise ``ValueError`` instead.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not bool((boxes[:, 2:] >= boxes[:, :2]).all()):
            raise ValueError(f"{name} has boxes with x2 < x1 or y2 < y1; GIoU needs valid boxes")
    inter, union = _inter_union(boxes1, boxes2)
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    hull = wh[..., 0] * wh[..., 1]  # (N, M)
    penalty = torch.where(
        hull > 0, (hull - union) / hull.clamp(min=torch.finfo(hull.dtype).tiny), 0.0
    )
    return iou - penalty


def boxes_to_masks(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Rasterises xyxy boxes into binary masks.

    A pixel ``(row, col)`` belongs to a box when its centre ``(col + 0.5, row + 0.5)`` lies
    inside the box, so a box with integer corners covers exactly ``(x2-x1)*(y2-y1)`` pixels.

    Args:
        boxes: (N, 4) xyxy in pixels.
        image_size: ``(height, width)`` of the masks.

    Returns:
        (N, height, width) bool masks.
    """
    _check_boxes(boxes)
    height, width = image_size
    ys = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5  # (H,)
    xs = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5  # (W,)
    inside_y = (ys[None, :] >= boxes[:, 1:2]) & (ys[None, :] < boxes[:, 3:4])  # (N, H)
    inside_x = (xs[None, :] >= boxes[:, 0:1]) & (xs[None, :] < boxes[:, 2:3])  # (N, W)
    return inside_y[:, :, None] & inside_x[:, None, :]  # (N, H, W)


class Boxes:
    """A list of N xyxy boxes in pixels, stored as an (N, 4) floating tensor.

    Example:
        >>> boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 20.0]]))
        >>> boxes.area()
        tensor([200.])
        >>> Boxes.from_format(torch.tensor([[5.0, 10.0, 10.0, 20.0]]), "cxcywh").tensor
        tensor([[ 0.,  0., 10., 20.]])
    """

    def __init__(self, tensor: Tensor) -> None:
        if isinstance(tensor, Tensor) and tensor.numel() == 0 and tensor.ndim == 1:
            tensor = tensor.reshape(0, 4)
        _check_boxes(tensor, "Boxes.tensor")
        if tensor.ndim != 2:
            raise ValueError(f"Boxes.tensor must have shape (N, 4), got {tuple(tensor.shape)}")
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError("Boxes.tensor holds non-finite coordinates (NaN or inf)")
        self.tensor = tensor

    @classmethod
    def from_format(cls, boxes: Tensor, fmt: BoxFormat) -> Boxes:
        """Builds from (N, 4) boxes in ``fmt`` (``xyxy``, ``xywh`` or ``cxcywh``)."""
        return cls(box_convert(boxes, fmt, "xyxy"))

    def convert(self, fmt: BoxFormat) -> Tensor:
        """The boxes as an (N, 4) tensor in ``fmt``."""
        return box_convert(self.tensor, "xyxy", fmt)

    def area(self) -> Tensor:
        """(N,) areas."""
        return box_area(self.tensor)

    def clip(self, image_size: tuple[int, int]) -> Boxes:
        """Boxes clipped to ``(height, width)``."""
        return Boxes(clip_boxes(self.tensor, image_size))

    def nonempty(self, threshold: float = 0.0) -> Tensor:
        """(N,) bool: width and height both greater than ``threshold``."""
        widths = self.tensor[:, 2] - self.tensor[:, 0]
        heights = self.tensor[:, 3] - self.tensor[:, 1]
        return (widths > threshold) & (heights > threshold)

    def to_masks(self, image_size: tuple[int, int]) -> Tensor:
        """(N, height, width) bool masks of the boxes; see :func:`boxes_to_masks`."""
        return boxes_to_masks(self.tensor, image_size)

    def to(self, device: torch.device | str) -> Boxes:
        return Boxes(self.tensor.to(device))

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Boxes:
        if isinstance(index, int):
            return Boxes(self.tensor[index].view(1, 4))
        return Boxes(self.tensor[index])

    def __repr__(self) -> str:
        return f"Boxes({self.tensor!r})"

    @staticmethod
    def cat(boxes_list: Sequence[Boxes]) -> Boxes:
        """Concatenates several :class:`Boxes` into one."""
        if not boxes_list:
            raise ValueError("Boxes.cat needs at least one Boxes")
        return Boxes(torch.cat([boxes.tensor for boxes in boxes_list], dim=0))
