"""The generated world's vocabulary and its random sampling: shapes with attributes, where they
sit in an image, and how they move through a video.

Everything here is geometry and choice; pixels are made in :mod:`.render`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SIZES: tuple[str, ...] = ("small", "medium", "large")
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")

# Radius ranges as fractions of min(height, width). The gaps between them keep the size word
# objective: a "small" shape is never larger than a "medium" one.
SIZE_RADIUS: dict[str, tuple[float, float]] = {
    "small": (0.06, 0.09),
    "medium": (0.11, 0.15),
    "large": (0.18, 0.24),
}
# Crowd members are smaller than "small" shapes: a crowd reads as many tiny things.
CROWD_RADIUS = (0.035, 0.05)
# An object with fewer visible pixels is not annotated (dropped from images, absent in frames).
MIN_VISIBLE_PIXELS = 30

Motion = Literal["bounce", "roam", "enter", "leave", "cross"]


@dataclass(frozen=True)
class Shape:
    """One object's appearance, constant over a video.

    Attributes:
        category: one of :data:`CATEGORIES`.
        colour: one of :data:`COLOURS`.
        size: one of :data:`SIZES` (crowd members are tiny and also called "small").
        texture: one of :data:`TEXTURES`.
        radius: characteristic radius in pixels (the circle's radius; polygons scale with it).
        angle: orientation in radians of the polygon and of its stripes or dot grid.
    """

    category: str
    colour: str
    size: str
    texture: str
    radius: float
    angle: float


@dataclass(frozen=True)
class Placement:
    """A shape at a position: its centre ``(cx, cy)`` in pixels, possibly outside the image."""

    shape: Shape
    cx: float
    cy: float


def sample_shape(
    rng: np.random.Generator,
    min_side: int,
    *,
    category_weights: Sequence[float] | None = None,
) -> Shape:
    """A shape with uniformly drawn attributes.

    Args:
        rng: the random stream.
        min_side: ``min(height, width)`` of the image, which the size classes are relative to.
        category_weights: optional probabilities over :data:`CATEGORIES` (default uniform).
    """
    category = CATEGORIES[rng.choice(len(CATEGORIES), p=category_weights)]
    size = SIZES[rng.integers(len(SIZES))]
    low, high = SIZE_RADIUS[size]
    return Shape(
        category=category,
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        size=size,
        texture=TEXTURES[rng.integers(len(TEXTURES))],
        radius=float(rng.uniform(low, high) * min_side),
        angle=float(rng.uniform(0.0, 2.0 * np.pi)),
    )


def sample_layout(rng: np.random.Generator, height: int, width: int) -> list[Placement]:
    """1 to 6 shapes placed uniformly, back to front; centres may sit slightly outside the
    image so that truncated objects occur."""
    min_side = min(height, width)
    placements = []
    for _ in range(int(rng.integers(1, 7))):
        shape = sample_shape(rng, min_side)
        slack = 0.3 * shape.radius
        placements.append(
            Placement(
                shape,
                float(rng.uniform(slack, width - slack)),
                float(rng.uniform(slack, height - slack)),
            )
        )
    return placements


def sample_crowd(rng: np.random.Generator, height: int, width: int) -> list[Placement]:
    """5 to 9 tiny shapes of one category and colour clustered around a point: a region that
    COCO would annotate once with ``iscrowd=1`` rather than instance by instance."""
    min_side = min(height, width)
    category = CATEGORIES[rng.integers(len(CATEGORIES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    centre_x = rng.uniform(0.2, 0.8) * width
    centre_y = rng.uniform(0.2, 0.8) * height
    spread = 0.1 * min_side
    members = []
    for _ in range(int(rng.integers(5, 10))):
        shape = Shape(
            category=category,
            colour=colour,
            size="small",
            texture=TEXTURES[rng.integers(len(TEXTURES))],
            radius=float(rng.uniform(*CROWD_RADIUS) * min_side),
            angle=float(rng.uniform(0.0, 2.0 * np.pi)),
        )
        offset_x, offset_y = rng.normal(0.0, spread, size=2)
        members.append(Placement(shape, float(centre_x + offset_x), float(centre_y + offset_y)))
    return members


def sample_trajectory(
    rng: np.random.Generator,
    radius: float,
    height: int,
    width: int,
    num_frames: int,
    motion: Motion,
    *,
    meet: tuple[float, float, int] | None = None,
) -> np.ndarray:
    """Centre positions over a video: constant velocity plus small random accelerations.

    Args:
        rng: the random stream.
        radius: the shape's radius in pixels (walls bounce its outline, not its centre).
        height: image height.
        width: image width.
        num_frames: video length T.
        motion: ``"bounce"`` starts inside and reflects off the image borders; ``"roam"``
            reflects off walls beyond the borders, so it leaves the view and comes back;
            ``"enter"`` starts outside and moves in; ``"leave"`` starts near a border and moves
            out; ``"cross"`` moves in a near-straight line through ``meet``.
        meet: ``(x, y, frame)`` that a ``"cross"`` path passes through (another object's
            position at that frame, so that the two overlap and one occludes the other).

    Returns:
        (T, 2) float centres ``(cx, cy)`` in pixels.
    """
    speed = rng.uniform(0.01, 0.04) * max(height, width)  # pixels per frame
    heading = rng.uniform(0.0, 2.0 * np.pi)
    sides = np.array([width, height], dtype=float)
    position = rng.uniform(radius, sides - radius)
    walls = None
    if motion == "bounce":
        walls = (np.full(2, radius), sides - radius)
    elif motion == "roam":
        walls = (np.full(2, -2.0 * radius), sides + 2.0 * radius)
    elif motion in ("enter", "leave"):
        # An edge (left, right, top, bottom) and its inward normal.
        edge = int(rng.integers(4))
        axis = edge // 2
        normal = np.zeros(2)
        normal[axis] = 1.0 if edge % 2 == 0 else -1.0
        edge_coordinate = 0.0 if edge % 2 == 0 else sides[axis]
        if motion == "enter":
            depth = -(radius + rng.uniform(0.0, 0.4 * speed * num_frames))  # outside
            direction = normal
        else:
            depth = rng.uniform(radius, 0.3 * sides[axis])
            direction = -normal
            # Fast enough to be gone well before the end.
            speed = max(speed, (depth + 2.0 * radius) / (0.7 * num_frames))
        position[axis] = edge_coordinate + normal[axis] * depth
        heading = np.arctan2(direction[1], direction[0]) + rng.uniform(-np.pi / 4.0, np.pi / 4.0)
    velocity = speed * np.array([np.cos(heading), np.sin(heading)])
    centres = np.empty((num_frames, 2))
    for frame in range(num_frames):
        centres[frame] = position
        velocity = velocity + rng.normal(0.0, 0.05 * speed, size=2)
        position = position + velocity
        if walls is not None:
            low, high = walls
            turn = ((position < low) & (velocity < 0)) | ((position > high) & (velocity > 0))
            velocity = np.where(turn, -velocity, velocity)
    if motion == "cross":
        if meet is None:
            raise ValueError("a crossing path needs a point to meet")
        # Without walls a path can be moved as a whole: make it pass through the point.
        centres += np.array(meet[:2]) - centres[meet[2]]
    return centres
