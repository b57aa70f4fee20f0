"""Numerical ops written in-house: multi-scale deformable attention (compiled, with a PyTorch
fallback), box and mask suppression (NMS, Matrix NMS) and RoIAlign (no torchvision)."""

from unipercept.ops.matrix_nms import mask_nms, matrix_nms
from unipercept.ops.ms_deform_attn import (
    cpu_isa,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    msda_backend,
)
from unipercept.ops.nms import batched_nms, nms
from unipercept.ops.roi_align import roi_align

__all__ = [
    "batched_nms",
    "cpu_isa",
    "mask_nms",
    "matrix_nms",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "msda_backend",
    "nms",
    "roi_align",
]
