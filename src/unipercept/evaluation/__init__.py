"""Evaluation: each task family's metric, agreeing with the benchmarks' official code."""

from unipercept.evaluation.referring import (
    ReferringBoxResult,
    ReferringMaskResult,
    referring_box_precision,
    referring_mask_iou,
)

__all__ = [
    "ReferringBoxResult",
    "ReferringMaskResult",
    "referring_box_precision",
    "referring_mask_iou",
]
