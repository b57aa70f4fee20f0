"""UNINEXT's test-time post-processing for images (detection, grounding) and the per-frame
selection of SOT/VOS, as pure functions of the model's raw outputs.

The chain follows ``UNINEXT_IMG.inference`` (``uninext_img.py:367-485``, the same code as
``UNINEXT_VID.inference``, ``uninext_vid.py:1092-1197``) and ``segmentation_postprocess``
(``models/ddetrs_dn.py:1278-1324``):

1. per-class logits: the mean of each class's token logits (:func:`od_logits`);
2. scores ``sqrt(sigmoid(cls) * sigmoid(iou))``, or ``sigmoid(cls)`` without the IoU branch
   (:func:`query_scores`);
3. per-class NMS at IoU 0.7 on each query's best class; the suppressed queries are dropped
   (all their classes), then top-k over the kept queries x classes (:func:`select_detections`);
4. boxes to input pixels, masks upsampled x4, sigmoid, > 0.5, cropped to the image
   (:func:`binary_masks`); then boxes scaled and clipped, masks nearest-resized to the original
   size (:func:`rescale_detections`).

Video-only steps (VOS soft aggregation, template updates, tracked boxes) are in
:mod:`unipercept.modeling.uninext.postprocess_video`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from unipercept.ops import nms

__all__ = [
    "UninextDetections",
    "binary_masks",
    "box_cxcywh_to_xyxy",
    "mask_probabilities",
    "nms_per_best_class",
    "od_logits",
    "query_scores",
    "rescale_boxes",
    "rescale_detections",
    "select_detections",
    "top_k_over_classes",
]


@dataclass(frozen=True, eq=False)
class UninextDetections:
    """The detections of one image.

    Attributes:
        boxes_xyxy: (N, 4) boxes in pixels of ``image_size``.
        scores: (N,) scores, decreasing.
        labels: (N,) int64 0-based class index (the prompt's category order; 0 for grounding
            and SOT/VOS).
        query_index: (N,) int64 decoder query each detection comes from (a query can appear
            once per class).
        image_size: (h, w) of the frame the boxes and masks live in: the valid input size
            after :func:`select_detections`, the original size after :func:`rescale_detections`.
        masks: (N, h, w) bool masks at ``image_size``, or None.
    """

    boxes_xyxy: Tensor
    scores: Tensor
    labels: Tensor
    query_index: Tensor
    image_size: tuple[int, int]
    masks: Tensor | None = None

    def __len__(self) -> int:
        return self.scores.shape[0]

    def with_masks(self, masks: Tensor) -> UninextDetections:
        """The same detections with ``masks`` (N, h, w) attached."""
        if masks.shape[0] != len(self) or tuple(masks.shape[-2:]) != tuple(self.image_size):
            raise ValueError(
                f"masks must be ({len(self)}, {self.image_size[0]}, {self.image_size[1]}), "
                f"got {tuple(masks.shape)}"
            )
        return UninextDetections(
            self.boxes_xyxy, self.scores, self.labels, self.query_index, self.image_size, masks
        )


def od_logits(logits: Tensor, positive_map: Tensor) -> Tensor:
    """Per-class logits from per-token logits (``convert_grounding_to_od_logits``,
    ``uninext_img.py:598-613``): each class gets the mean of the logits of its tokens.

    Args:
        logits: (B, Q, T) logits of every query against every text token (T = 256 for category
            prompts; T = 1 with ``positive_map = [[1]]`` for pooled prompts).
        positive_map: (K, T) 1 where token t belongs to class k (bool or 0/1 numbers).

    Returns:
        (B, Q, K) class logits. A class without tokens (e.g. cut off by the 256-token limit)
        gets logit 0, as UNINEXT leaves it at its zero initialisation.
    """
    if logits.ndim != 3 or positive_map.ndim != 2 or positive_map.shape[1] != logits.shape[-1]:
        raise ValueError(
            f"logits (B, Q, T) and positive_map (K, T) do not fit: {tuple(logits.shape)}, "
            f"{tuple(positive_map.shape)}"
        )
    weights = (positive_map != 0).to(logits.dtype)  # (K, T)
    counts = weights.sum(-1).clamp(min=1.0)  # (K,)
    # UNINEXT's logits are clamped to +-50000, so the zero weights never meet an inf.
    return (logits @ weights.t()) / counts  # (B, Q, K)


def query_scores(cls_logits: Tensor, iou_logits: Tensor | None) -> Tensor:
    """Detection scores of every query and class (``uninext_img.py:396-400``).

    Args:
        cls_logits: (..., Q, K) class logits (after :func:`od_logits`).
        iou_logits: (..., Q, 1) IoU-branch logits, or None where the branch is switched off
            (VIS and MOT evaluation): the score is then ``sigmoid(cls)`` itself, not its square
            root.

    Returns:
        (..., Q, K) ``sqrt(sigmoid(cls) * sigmoid(iou))``, or ``sigmoid(cls)``.
    """
    prob = cls_logits.sigmoid()
    if iou_logits is None:
        return prob
    return torch.sqrt(prob * iou_logits.sigmoid())


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy, with UNINEXT's operation order (``cx - 0.5 * w``)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def nms_per_best_class(scores: Tensor, boxes_cxcywh: Tensor, iou_threshold: float = 0.7) -> Tensor:
    """UNINEXT's duplicate removal (``uninext_img.py:410-413``): every query takes its best
    class and score, and NMS runs within each best class on the normalised xyxy boxes.

    Args:
        scores: (Q, K) scores from :func:`query_scores`.
        boxes_cxcywh: (Q, 4) normalised cxcywh boxes.
        iou_threshold: a query is suppressed by a higher-scoring one of the same best class
            when their IoU is strictly greater than this.

    Returns:
        (Q',) int64 indices of the kept queries, by decreasing best score.
    """
    if scores.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=scores.device)
    best_scores, best_labels = scores.max(dim=-1)  # (Q,), (Q,)
    boxes = box_cxcywh_to_xyxy(boxes_cxcywh)  # (Q, 4) normalised xyxy
    # torchvision's batched_nms, as UNINEXT calls it (fewer than 4000 coordinates), moves each
    # class to its own region by adding label * (max + 1) to the coordinates. The shift is
    # copied so that the float32 IoUs, hence decisions near the threshold, round the same way
    # (unipercept.ops.batched_nms shifts by (label - min) * (max - min + 1) instead). Classes
    # stay apart because boxes from sigmoid cxcywh never go below -0.5.
    offsets = best_labels.to(boxes.dtype) * (boxes.max() + 1)  # (Q,)
    return nms(boxes + offsets[:, None], best_scores, iou_threshold)


def top_k_over_classes(scores: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """The ``top_k`` best (query, class) pairs (``uninext_img.py:419-425``).

    Args:
        scores: (Q', K) scores of the queries kept by NMS, every class.
        top_k: how many pairs to keep (fewer if there are fewer).

    Returns:
        ``(values, flat_indexes)``, each (k,): the scores and the indexes into
        ``scores.flatten()``; the row is ``flat_indexes // K``, the class ``flat_indexes % K``.
    """
    flat = scores.reshape(-1)  # (Q' * K,)
    return torch.topk(flat, min(top_k, flat.numel()), dim=0)


def select_detections(
    cls_logits: Tensor,
    iou_logits: Tensor | None,
    boxes_cxcywh: Tensor,
    *,
    image_size: tuple[int, int],
    nms_iou: float = 0.7,
    top_k: int = 100,
) -> UninextDetections:
    """UNINEXT's detection selection for one image: scores, NMS on the best class, top-k.

    Queries suppressed by NMS are removed with all their classes before the top-k (they are
    not zeroed), so a query kept by NMS may still contribute its other classes. Top-k is 100
    for detection and 1 for grounding, SOT and VOS.

    Args:
        cls_logits: (Q, K) class logits (after :func:`od_logits`).
        iou_logits: (Q, 1) IoU-branch logits, or None when the branch is off (see
            :func:`query_scores`).
        boxes_cxcywh: (Q, 4) normalised cxcywh boxes (relative to the valid image size).
        image_size: (h, w) of the image before padding, in input pixels.
        nms_iou: IoU above which NMS suppresses a query.
        top_k: number of (query, class) pairs to return.

    Returns:
        The detections in input pixels (no masks; attach them with
        :meth:`UninextDetections.with_masks` and :func:`binary_masks`).
    """
    num_classes = cls_logits.shape[-1]
    # A bf16 / fp16 model's outputs are scored in float32 (a no-op for float32 ones).
    cls_logits, boxes_cxcywh = cls_logits.float(), boxes_cxcywh.float()
    iou_logits = iou_logits.float() if iou_logits is not None else None
    scores = query_scores(cls_logits, iou_logits)  # (Q, K)
    keep = nms_per_best_class(scores, boxes_cxcywh, nms_iou)  # (Q',)
    values, flat_indexes = top_k_over_classes(scores[keep], top_k)  # (k,), (k,)
    query_index = keep[torch.div(flat_indexes, num_classes, rounding_mode="floor")]  # (k,)
    labels = flat_indexes % num_classes  # (k,)
    height, width = image_size
    # Boxes.scale with the integer size: each coordinate times w or h, in the boxes' dtype.
    scale = torch.tensor([width, height, width, height], dtype=boxes_cxcywh.dtype)
    boxes = box_cxcywh_to_xyxy(boxes_cxcywh[query_index]) * scale.to(boxes_cxcywh.device)
    return UninextDetections(boxes, values, labels, query_index, (int(height), int(width)))


def mask_probabilities(
    mask_logits: Tensor, *, image_size: tuple[int, int], mask_stride: int = 4
) -> Tensor:
    """Mask probabilities at input resolution (``uninext_img.py:474-479``): bilinear x
    ``mask_stride`` (align_corners False) on the logits, then sigmoid, then the crop to the
    image's valid region.

    The upsampled grid is ``mask_stride`` times the logits' grid, which can exceed the padded
    input when the padded size is not a multiple of 8; the crop makes that irrelevant.

    Args:
        mask_logits: (N, 1, h4, w4) mask logits at stride 4 of the padded input.
        image_size: (h, w) of the image before padding.
        mask_stride: the logits' stride.

    Returns:
        (N, h, w) probabilities.
    """
    height4, width4 = mask_logits.shape[-2:]
    size = (height4 * mask_stride, width4 * mask_stride)
    upsampled = F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
    probs = upsampled.sigmoid()[:, 0]  # (N, H_pad, W_pad)
    return probs[:, : image_size[0], : image_size[1]]


def binary_masks(
    mask_logits: Tensor,
    *,
    image_size: tuple[int, int],
    mask_stride: int = 4,
    threshold: float = 0.5,
) -> Tensor:
    """Binary masks at input resolution: :func:`mask_probabilities` > ``threshold``.

    UNINEXT thresholds after upsampling the logits and after the sigmoid (so a pixel whose
    logit is positive but whose float32 sigmoid rounds to exactly 0.5 is background).

    Args:
        mask_logits: (N, 1, h4, w4) mask logits at stride 4.
        image_size: (h, w) of the image before padding.
        mask_stride: the logits' stride.
        threshold: probability cut.

    Returns:
        (N, h, w) bool masks.
    """
    probs = mask_probabilities(mask_logits, image_size=image_size, mask_stride=mask_stride)
    return probs > threshold


def rescale_boxes(
    boxes_xyxy: Tensor, *, image_size: tuple[int, int], orig_size: tuple[int, int]
) -> Tensor:
    """Input-pixel boxes to original pixels: scaled by ``orig / input`` per axis and clipped to
    the original image (detectron2 ``Boxes.scale`` + ``Boxes.clip``).

    Args:
        boxes_xyxy: (N, 4) boxes in pixels of ``image_size``.
        image_size: (h, w) the boxes refer to.
        orig_size: (H, W) of the original image.

    Returns:
        (N, 4) boxes in original pixels, inside ``[0, W] x [0, H]``.
    """
    out_height, out_width = orig_size
    scale_x = out_width / image_size[1]
    scale_y = out_height / image_size[0]
    # Multiplying by the Python float (as Boxes.scale does) keeps torch's rounding of it.
    xs = (boxes_xyxy[:, 0::2] * scale_x).clamp(min=0, max=out_width)  # (N, 2) x1, x2
    ys = (boxes_xyxy[:, 1::2] * scale_y).clamp(min=0, max=out_height)  # (N, 2) y1, y2
    return torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=-1)


def rescale_detections(
    detections: UninextDetections, *, orig_size: tuple[int, int]
) -> UninextDetections:
    """``segmentation_postprocess``: detections at the original image size.

    Boxes are scaled and clipped (:func:`rescale_boxes`), detections whose clipped box has no
    width or no height are dropped, and masks are nearest-resized to the original size.

    Args:
        detections: the detections at input size.
        orig_size: (H, W) of the original image.

    Returns:
        The detections in original pixels.
    """
    boxes = rescale_boxes(
        detections.boxes_xyxy, image_size=detections.image_size, orig_size=orig_size
    )
    nonempty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (N,)
    masks = detections.masks
    if masks is not None:
        kept = masks[nonempty, None].float()  # (N', 1, h, w)
        masks = F.interpolate(kept, size=tuple(orig_size), mode="nearest")[:, 0] > 0.5  # (N', H, W)
    return UninextDetections(
        boxes[nonempty],
        detections.scores[nonempty],
        detections.labels[nonempty],
        detections.query_index[nonempty],
        (int(orig_size[0]), int(orig_size[1])),
        masks,
    )
