"""Typed data that flows between the parts of unipercept: boxes, masks, images, instances,
prompts."""

from unipercept.structures.boxes import (
    Boxes,
    box_area,
    box_convert,
    box_iou,
    boxes_to_masks,
    clip_boxes,
    denormalize_boxes,
    generalized_box_iou,
    normalize_boxes,
)
from unipercept.structures.image_batch import ImageBatch
from unipercept.structures.instances import Instances
from unipercept.structures.masks import (
    RLE,
    RLEMasks,
    mask_iou,
    masks_to_boxes,
    paste_masks_in_image,
    polygons_to_mask,
    polygons_to_rle,
    resize_masks,
    rle_area,
    rle_decode,
    rle_encode,
    rle_iou,
)
from unipercept.structures.prompts import (
    AnnotationPrompt,
    CategoryPrompt,
    ExpressionPrompt,
    Prompt,
)

__all__ = [
    "RLE",
    "AnnotationPrompt",
    "Boxes",
    "CategoryPrompt",
    "ExpressionPrompt",
    "ImageBatch",
    "Instances",
    "Prompt",
    "RLEMasks",
    "box_area",
    "box_convert",
    "box_iou",
    "boxes_to_masks",
    "clip_boxes",
    "denormalize_boxes",
    "generalized_box_iou",
    "mask_iou",
    "masks_to_boxes",
    "normalize_boxes",
    "paste_masks_in_image",
    "polygons_to_mask",
    "polygons_to_rle",
    "resize_masks",
    "rle_area",
    "rle_decode",
    "rle_encode",
    "rle_iou",
]
