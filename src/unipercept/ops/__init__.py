"""Numerical ops written in-house: box suppression and RoIAlign (no torchvision)."""

from unipercept.ops.nms import batched_nms, nms
from unipercept.ops.roi_align import roi_align

__all__ = ["batched_nms", "nms", "roi_align"]
