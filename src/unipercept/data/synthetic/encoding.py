"""Bytes and annotation encodings shared by the writers: JPEG frames, DAVIS palette PNGs,
boxes, COCO polygons and RLEs.

Every encoder is deterministic: the same array gives the same bytes.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

JPEG_QUALITY = 90


def encode_jpeg(image: np.ndarray) -> bytes:
    """JPEG bytes of a (H, W, 3) uint8 RGB image at a fixed quality."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS and PASCAL VOC annotations, flattened ``[r, g, b, ...]``.

    Index 0 is black, 1 is (128, 0, 0), 2 is (0, 128, 0), ...: the bits of the index are
    spread over the high bits of the three channels.
    """
    palette = []
    for index in range(256):
        red = green = blue = 0
        bits = index
        for shift in range(7, -1, -1):
            red |= (bits & 1) << shift
            green |= ((bits >> 1) & 1) << shift
            blue |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette += [red, green, blue]
    return palette


_PALETTE = davis_palette()


def encode_index_png(labels: np.ndarray) -> bytes:
    """Palette ("P" mode) PNG bytes of (H, W) object indices, 0 for background."""
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(_PALETTE)  # turns the grey image into a palette ("P") one
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mask_box(mask: np.ndarray) -> list[int]:
    """``[x, y, w, h]`` tight pixel box of a non-empty (H, W) bool mask (as pycocotools'
    ``toBbox`` gives for its RLE)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [
        int(cols[0]),
        int(rows[0]),
        int(cols[-1] - cols[0] + 1),
        int(rows[-1] - rows[0] + 1),
    ]


def rle_compressed(mask: np.ndarray) -> dict:
    """COCO compressed RLE ``{"size": [h, w], "counts": str}`` of a (H, W) bool mask."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def rle_uncompressed(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE ``{"size": [h, w], "counts": [int, ...]}``: run lengths over the
    column-major pixels, starting with a (possibly empty) run of zeros, as COCO crowd
    annotations and YouTube-VIS store them."""
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major order
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """Removes repeated points and points on a straight line between their neighbours from
    a closed (V, 2) outline."""
    keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
    points = points[keep]
    if len(points) < 3:
        return points
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    cross = (points[:, 0] - before[:, 0]) * (after[:, 1] - before[:, 1]) - (
        points[:, 1] - before[:, 1]
    ) * (after[:, 0] - before[:, 0])
    return points[cross != 0]


def polygons(mask: np.ndarray) -> list[list[float]] | None:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` that rasterise exactly to ``mask``, or None
    when no polygon set can (a mask with holes, which COCO polygons cannot express).

    The outlines follow pixel edges rather than pixel centres: the mask is upsampled twice so
    that ``cv2.findContours`` returns points on the boundary pixels, which map to the corners
    of the original pixels. pycocotools then decodes the polygons to the very same pixels.
    """
    upsampled = np.repeat(np.repeat(mask.astype(np.uint8), 2, axis=0), 2, axis=1)
    contours, _ = cv2.findContours(upsampled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outlines = []
    for contour in contours:
        # Upsampled pixel u lies on the original pixel u // 2; an odd u is its right (or
        # bottom) half, whose outer edge is the corner u // 2 + 1.
        corners = _drop_collinear((contour.reshape(-1, 2) + 1) // 2)
        if len(corners) >= 3:
            outlines.append([float(value) for value in corners.reshape(-1)])
    if not outlines:
        return None
    height, width = mask.shape
    decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(outlines, height, width)))
    return outlines if np.array_equal(decoded.astype(bool), mask) else None


def polygon_area(outlines: list[list[float]], height: int, width: int) -> int:
    """Pixel area of COCO polygons as pycocotools computes it."""
    return int(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(outlines, height, width))))
