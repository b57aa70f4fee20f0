"""UNINEXT's per-frame post-processing for SOT and VOS, as pure functions.

Per frame and object, the model's outputs first go through
:func:`~unipercept.modeling.uninext.postprocess.select_detections` with ``top_k=1``; then:

- SOT (``uninext_vid.py:478-542``): :func:`track_box` gives the box in original pixels; the
  template is refreshed every ``update_interval`` (200) frames when the score is > 0.7, from
  that box mapped back to input pixels (:func:`unscale_box`).
- VOS (``uninext_vid.py:860-954``): the mask stays a probability
  (:func:`~unipercept.modeling.uninext.postprocess.mask_probabilities`), is resized bilinearly
  to the original size (:func:`probabilities_to_original`; a new object's prompt mask, cropped
  to the input size, goes the same way), and the objects are merged into one label map by
  :func:`soft_aggregate`. An object whose score is >= 0.7 gets a new "previous" template from
  its region of the label map (:func:`vos_template_update`). On YouTube-VOS 2018 only, UNINEXT
  also zeroes the probabilities of an object scoring < 0.5 before the aggregation
  (``uninext_vid.py:900-901``); that dataset rule is left to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from unipercept.modeling.uninext.postprocess import UninextDetections, rescale_boxes

__all__ = [
    "TrackedBox",
    "VosTemplateUpdate",
    "mask_bounding_box",
    "probabilities_to_original",
    "soft_aggregate",
    "track_box",
    "unscale_box",
    "vos_template_update",
]


@dataclass(frozen=True, eq=False)
class TrackedBox:
    """One object's box on one frame, in original pixels.

    Attributes:
        box_xyxy: (4,) box clipped to the original image.
        box_xywh: (4,) the same box as (x1, y1, w, h): what UNINEXT writes for SOT.
        score: the detection score.
    """

    box_xyxy: Tensor
    box_xywh: Tensor
    score: float


@dataclass(frozen=True, eq=False)
class VosTemplateUpdate:
    """The inputs of a VOS object's new template (``uninext_vid.py:944-953``).

    Attributes:
        box_xyxy: (1, 4) box of the object's label-map region, in input pixels.
        prior_mask: (1, H_pad, W_pad) float 0/1 mask: the region nearest-resized to the input
            size and zero-padded to the padded input: the template's 4th channel.
    """

    box_xyxy: Tensor
    prior_mask: Tensor


def track_box(detections: UninextDetections, *, orig_size: tuple[int, int]) -> TrackedBox:
    """The top-1 detection's box in original pixels, scaled and clipped.

    Args:
        detections: the frame's detections at input size (the first one is used).
        orig_size: (H, W) of the original frame.

    Returns:
        The tracked box and its score.
    """
    if len(detections) == 0:
        raise ValueError("no detection to track")
    box = rescale_boxes(
        detections.boxes_xyxy[:1], image_size=detections.image_size, orig_size=orig_size
    )[0]  # (4,) xyxy
    box_xywh = torch.cat([box[:2], box[2:] - box[:2]])  # (4,) x1, y1, w, h
    return TrackedBox(box, box_xywh, float(detections.scores[0]))


def unscale_box(
    box_xyxy: Tensor, *, image_size: tuple[int, int], orig_size: tuple[int, int]
) -> Tensor:
    """A box in original pixels back to input pixels, for a template update.

    UNINEXT divides by the float32 scale factors ``orig / input`` (``uninext_vid.py:540,947``)
    rather than multiplying by their inverses.

    Args:
        box_xyxy: (..., 4) box in original pixels (integers are accepted).
        image_size: (h, w) input size before padding.
        orig_size: (H, W) original size.

    Returns:
        (..., 4) float32 box in input pixels.
    """
    scale_x = orig_size[1] / image_size[1]
    scale_y = orig_size[0] / image_size[0]
    scale = torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=torch.float32)
    return box_xyxy.to(torch.float32) / scale.to(box_xyxy.device)


def probabilities_to_original(probs: Tensor, *, orig_size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners False) of cropped mask probabilities to the original size
    (``uninext_vid.py:903``; for new objects' prompt masks ``:910-912``).

    Args:
        probs: (N, h, w) probabilities at the valid input size.
        orig_size: (H, W) of the original frame.

    Returns:
        (N, H, W) probabilities.
    """
    resized = F.interpolate(
        probs[:, None].float(), size=tuple(orig_size), mode="bilinear", align_corners=False
    )
    return resized[:, 0]


def soft_aggregate(probs: Tensor) -> Tensor:
    """Merge the masks of N objects into one label map (``uninext_vid.py:920-931``).

    The background probability is ``prod_i (1 - p_i)``; every pixel takes the label with the
    largest probability among background and objects, the first one on ties (so background
    wins a tie, and among objects the lower label). Objects should be ordered by their id, as
    UNINEXT's label channels are the object ids.

    Args:
        probs: (N, H, W) probabilities of N objects (N may be 0).

    Returns:
        (H, W) int64 label map: 0 background, i + 1 where object i wins.
    """
    if probs.shape[0] == 0:
        return torch.zeros(probs.shape[1:], dtype=torch.int64, device=probs.device)
    # Left-to-right product in the probabilities' dtype, like numpy's prod over few objects.
    background = 1 - probs[0]  # (H, W)
    for prob in probs[1:]:
        background = background * (1 - prob)
    stacked = torch.cat([background[None], probs], dim=0)  # (N + 1, H, W)
    return stacked.argmax(dim=0)


def mask_bounding_box(mask: Tensor) -> tuple[int, int, int, int] | None:
    """UNINEXT's ``bounding_box`` (``uninext_vid.py:1605-1610``): the extreme foreground pixels.

    The width and height are ``x2 - x1`` and ``y2 - y1`` of the first and last foreground
    column/row (a one-pixel mask has size 0), not pixel counts.

    Args:
        mask: (H, W) bool mask.

    Returns:
        ``(x1, y1, w, h)`` ints, or None for an empty mask (where UNINEXT's bare ``except``
        skips the update).
    """
    rows = torch.nonzero(mask.any(dim=1)).flatten()  # foreground rows
    cols = torch.nonzero(mask.any(dim=0)).flatten()  # foreground columns
    if rows.numel() == 0:
        return None
    y1, y2 = int(rows[0]), int(rows[-1])
    x1, x2 = int(cols[0]), int(cols[-1])
    return x1, y1, x2 - x1, y2 - y1


def vos_template_update(
    label_map: Tensor,
    label: int,
    *,
    image_size: tuple[int, int],
    orig_size: tuple[int, int],
    padded_size: tuple[int, int] | None = None,
) -> VosTemplateUpdate | None:
    """The new template's box and prior mask of one VOS object, from the frame's label map.

    The object's region is the hard ``label_map == label`` (not its soft probability): its
    bounding box (:func:`mask_bounding_box`) mapped to input pixels (:func:`unscale_box`), and
    the region nearest-resized to the input size, zero-padded to the padded input.

    Args:
        label_map: (H, W) label map at the original size (:func:`soft_aggregate`).
        label: the object's label in it.
        image_size: (h, w) input size before padding.
        orig_size: (H, W) original size.
        padded_size: (H_pad, W_pad) of the padded input tensor (default ``image_size``).

    Returns:
        The update, or None when the object has no pixel in the label map.
    """
    region = label_map == label  # (H, W)
    bbox = mask_bounding_box(region)
    if bbox is None:
        return None
    x1, y1, w, h = bbox
    box = unscale_box(
        torch.tensor([[x1, y1, x1 + w, y1 + h]], device=label_map.device),
        image_size=image_size,
        orig_size=orig_size,
    )  # (1, 4)
    resized = F.interpolate(region[None, None].float(), size=tuple(image_size), mode="nearest")
    height, width = padded_size if padded_size is not None else image_size
    prior = torch.zeros((1, height, width), device=label_map.device)
    prior[:, : image_size[0], : image_size[1]] = resized[0]
    return VosTemplateUpdate(box, prior)
