"""Pixels of the generated world: textured backgrounds, exact shape masks, painted textures, and
composition in z-order.

Masks are rasterised without anti-aliasing, so a mask is exactly the set of pixels its shape
painted, and a visible mask is exactly the set where that shape is the front-most one.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .world import COLOURS, Placement, Shape

# Second colour of stripes and dots: a darker shade keeps the object's colour name true.
_SHADE = {name: tuple(int(0.45 * c) for c in rgb) for name, rgb in COLOURS.items()}
_SHADE["black"] = (110, 110, 110)
_RING_INNER = 0.55  # inner radius of a ring, as a fraction of its outer radius
_POLYGON_SHIFT = 4  # cv2.fillPoly fixed-point bits: vertices at 1/16 pixel precision


@dataclass(frozen=True)
class LocalMask:
    """A shape's full (amodal) mask on a square window that may extend past the image.

    Attributes:
        x0: image column of the window's left edge.
        y0: image row of the window's top edge.
        mask: (S, S) bool, True inside the shape.
    """

    x0: int
    y0: int
    mask: np.ndarray


@dataclass(frozen=True)
class Composite:
    """A rendered frame and where each placed shape ended up.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) int32, 1 + index of the front-most shape at each pixel, 0 for background.
        amodal_boxes: (N, 4) int ``[x, y, w, h]`` of each full shape, possibly beyond the image.
        amodal_areas: (N,) int pixel count of each full shape, inside the image or not.
        view_boxes: (N, 4) int ``[x, y, w, h]`` of each full shape's part inside the image
            (occluders ignored); zeros where the shape is out of view.
        view_areas: (N,) int pixel count of each full shape's part inside the image.
        in_view: (N,) bool, some part of the shape lies inside the image.
    """

    image: np.ndarray
    labels: np.ndarray
    amodal_boxes: np.ndarray
    amodal_areas: np.ndarray
    view_boxes: np.ndarray
    view_areas: np.ndarray
    in_view: np.ndarray


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A desaturated mid-brightness RGB colour, far from the saturated object colours."""
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.35), rng.uniform(0.35, 0.75))
    return 255.0 * np.array(rgb, dtype=np.float32)


def make_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A textured background: smooth noise, a gradient or soft stripes between two muted
    colours, plus fine grain, so that no single colour separates shapes from background.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    first, second = _muted_colour(rng), _muted_colour(rng)
    kind = int(rng.integers(3))
    if kind == 0:
        coarse = rng.random((int(rng.integers(3, 7)), int(rng.integers(3, 7)))).astype(np.float32)
        mix = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    else:
        angle = rng.uniform(0.0, np.pi)
        rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
        along = cols * math.cos(angle) + rows * math.sin(angle)
        if kind == 1:
            mix = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        else:
            period = rng.uniform(0.1, 0.3) * max(height, width)
            mix = 0.5 + 0.5 * np.sin(2.0 * np.pi * along / period + rng.uniform(0.0, 2 * np.pi))
    mix = np.clip(mix, 0.0, 1.0)[..., None]  # (H, W, 1)
    image = first * (1.0 - mix) + second * mix + rng.normal(0.0, 4.0, size=(height, width, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _polygon(shape: Shape) -> np.ndarray:
    """(V, 2) vertices, relative to the centre, of the polygonal categories."""
    radius, angle = shape.radius, shape.angle
    if shape.category == "star":
        # Alternate outer and inner vertices: 5 points.
        steps = np.arange(10)
        radii = np.where(steps % 2 == 0, 1.15 * radius, 0.5 * radius)
        angles = angle + steps * np.pi / 5.0
    else:
        count, scale = {"square": (4, 1.2), "triangle": (3, 1.15), "hexagon": (6, 1.0)}[
            shape.category
        ]
        radii = np.full(count, scale * radius)
        angles = angle + np.arange(count) * 2.0 * np.pi / count
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def rasterise(placement: Placement) -> LocalMask:
    """The full mask of a placed shape on a window around it (not clipped to any image)."""
    shape = placement.shape
    half = math.ceil(1.2 * shape.radius) + 1
    x0 = math.floor(placement.cx) - half
    y0 = math.floor(placement.cy) - half
    side = 2 * half + 1
    if shape.category in ("circle", "ring"):
        rows, cols = np.mgrid[0:side, 0:side].astype(np.float64)
        squared = (cols + x0 - placement.cx) ** 2 + (rows + y0 - placement.cy) ** 2
        mask = squared <= shape.radius**2
        if shape.category == "ring":
            mask &= squared >= (_RING_INNER * shape.radius) ** 2
        return LocalMask(x0, y0, mask)
    vertices = _polygon(shape) + np.array([placement.cx - x0, placement.cy - y0])
    fixed = np.rint(vertices * (1 << _POLYGON_SHIFT)).astype(np.int32)
    canvas = np.zeros((side, side), dtype=np.uint8)
    # LINE_8 (no anti-aliasing): every pixel is either inside or outside.
    cv2.fillPoly(canvas, [fixed], 1, lineType=cv2.LINE_8, shift=_POLYGON_SHIFT)
    return LocalMask(x0, y0, canvas.astype(bool))


def paint(placement: Placement, local: LocalMask) -> np.ndarray:
    """The shape's texture on its window: solid colour, stripes or dots in a darker shade,
    anchored at the shape's centre so the pattern moves with the shape.

    Returns:
        (S, S, 3) uint8 RGB (meaningful only inside ``local.mask``).
    """
    shape = placement.shape
    side = local.mask.shape[0]
    colour = np.array(COLOURS[shape.colour], dtype=np.uint8)
    texture = np.broadcast_to(colour, (side, side, 3)).copy()
    if shape.texture == "solid":
        return texture
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float64)
    dx, dy = cols + local.x0 - placement.cx, rows + local.y0 - placement.cy
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    if shape.texture == "striped":
        period = max(4.0, shape.radius / 2.5)
        second = np.floor(u / (period / 2.0)) % 2 == 1
    else:
        period = max(5.0, shape.radius / 2.2)
        du = np.mod(u, period) - period / 2.0
        dv = np.mod(v, period) - period / 2.0
        second = du**2 + dv**2 <= (0.28 * period) ** 2
    texture[second] = _SHADE[shape.colour]
    return texture


def _box(x0: int, y0: int, mask: np.ndarray) -> list[int]:
    """``[x, y, w, h]`` of the True pixels of ``mask`` placed at ``(x0, y0)``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [
        x0 + int(cols[0]),
        y0 + int(rows[0]),
        int(cols[-1] - cols[0] + 1),
        int(rows[-1] - rows[0] + 1),
    ]


def compose(background: np.ndarray, placements: Sequence[Placement]) -> Composite:
    """Paints the placements over the background, back to front (later ones occlude
    earlier ones).

    Args:
        background: (H, W, 3) uint8 RGB.
        placements: shapes in z-order, back first.
    """
    height, width = background.shape[:2]
    image = background.copy()
    labels = np.zeros((height, width), dtype=np.int32)
    count = len(placements)
    amodal_boxes = np.zeros((count, 4), dtype=np.int64)
    amodal_areas = np.zeros(count, dtype=np.int64)
    view_boxes = np.zeros((count, 4), dtype=np.int64)
    view_areas = np.zeros(count, dtype=np.int64)
    in_view = np.zeros(count, dtype=bool)
    for index, placement in enumerate(placements):
        local = rasterise(placement)
        amodal_boxes[index] = _box(local.x0, local.y0, local.mask)
        amodal_areas[index] = int(local.mask.sum())
        side = local.mask.shape[0]
        # The window clipped to the image, in image and in window coordinates.
        left, top = max(local.x0, 0), max(local.y0, 0)
        right, bottom = min(local.x0 + side, width), min(local.y0 + side, height)
        if right <= left or bottom <= top:
            continue
        window = (
            slice(top - local.y0, bottom - local.y0),
            slice(left - local.x0, right - local.x0),
        )
        inside = local.mask[window]
        if not inside.any():
            continue
        in_view[index] = True
        view_boxes[index] = _box(left, top, inside)
        view_areas[index] = int(inside.sum())
        target = (slice(top, bottom), slice(left, right))
        image[target][inside] = paint(placement, local)[window][inside]
        labels[target][inside] = index + 1
    return Composite(image, labels, amodal_boxes, amodal_areas, view_boxes, view_areas, in_view)
