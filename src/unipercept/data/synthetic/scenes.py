"""Rendered images and videos with everything the writers need: visible masks, boxes, track
statistics and referring expressions. Each is rendered once and written to every format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .encoding import mask_box
from .expressions import MOTIONS, Facts, phrases, sample_expressions
from .render import Composite, compose, make_background
from .world import (
    MIN_VISIBLE_PIXELS,
    Motion,
    Placement,
    Shape,
    sample_crowd,
    sample_layout,
    sample_shape,
    sample_trajectory,
)

_FIRST_MOTIONS: tuple[Motion, ...] = ("bounce", "bounce", "roam")
_OTHER_MOTIONS: tuple[Motion, ...] = ("bounce", "roam", "enter", "leave", "cross", "cross")
# The share of its frames an object needs to be visible in to be talked about in a video.
_REFERABLE_SHARE = 0.5
# Net displacement, as a fraction of the image side, that counts as moving in a direction.
_MOTION_DISPLACEMENT = 0.15


@dataclass(frozen=True)
class ImageObject:
    """An annotated instance of an image.

    Attributes:
        shape: its appearance.
        mask: (H, W) bool visible pixels (at least :data:`MIN_VISIBLE_PIXELS`).
        expressions: unambiguous referring expressions (0 to 3).
    """

    shape: Shape
    mask: np.ndarray
    expressions: tuple[str, ...]


@dataclass(frozen=True)
class Crowd:
    """A region of many tiny shapes of one category, annotated once with ``iscrowd=1``.

    Attributes:
        category: the members' category.
        mask: (H, W) bool union of the members' visible pixels.
    """

    category: str
    mask: np.ndarray


@dataclass(frozen=True)
class ImageSample:
    """A rendered image.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        objects: the annotated instances, back to front.
        crowd: the crowd region, if the image has one.
    """

    image: np.ndarray
    objects: tuple[ImageObject, ...]
    crowd: Crowd | None


@dataclass(frozen=True)
class Track:
    """One object of a video, over all T frames.

    Attributes:
        track_id: its label in :attr:`VideoSample.labels`, 1..K, stable over the video.
        shape: its appearance.
        present: (T,) bool, at least :data:`MIN_VISIBLE_PIXELS` visible pixels.
        in_view: (T,) bool, some of the full shape lies inside the image.
        visible_pixels: (T,) int raw count of front-most pixels (also below the threshold).
        amodal_areas: (T,) int pixel count of the full shape, inside the image or not.
        amodal_boxes: (T, 4) int ``[x, y, w, h]`` of the full shape, possibly beyond the image.
        view_boxes: (T, 4) int ``[x, y, w, h]`` of the full shape's part inside the image;
            zeros where out of view.
        view_areas: (T,) int pixel count of the full shape's part inside the image.
        expressions: unambiguous expressions (empty unless the track is a referring target).
        description: a sentence about the object (its best unambiguous expression, or all
            its attributes when none exists).
    """

    track_id: int
    shape: Shape
    present: np.ndarray
    in_view: np.ndarray
    visible_pixels: np.ndarray
    amodal_areas: np.ndarray
    amodal_boxes: np.ndarray
    view_boxes: np.ndarray
    view_areas: np.ndarray
    expressions: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class VideoSample:
    """A rendered video.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        labels: (T, H, W) uint8 track id of the visible object at each pixel; 0 for background
            and for objects below the visibility threshold in that frame.
        tracks: the objects visible in at least one frame, ordered by track id.
    """

    frames: np.ndarray
    labels: np.ndarray
    tracks: tuple[Track, ...]


def _facts(
    shape: Shape, box: Sequence[float], height: int, width: int, motion: str | None = None
) -> Facts:
    """What expressions may say about a shape whose (visible) box is ``[x, y, w, h]``."""
    centre = ((box[0] + box[2] / 2.0) / width, (box[1] + box[3] / 2.0) / height)
    return Facts(shape.category, shape.colour, shape.size, shape.texture, centre, motion)


def render_image(rng: np.random.Generator, height: int, width: int, *, crowd: bool) -> ImageSample:
    """Samples and renders an image of 1 to 6 shapes (and a crowd region when asked).

    Objects left with fewer than :data:`MIN_VISIBLE_PIXELS` visible pixels are removed and the
    image re-rendered, so every visible shape is annotated. An image is redrawn in the rare
    case that no object can be referred to unambiguously.
    """
    while True:
        background = make_background(rng, height, width)
        members = sample_crowd(rng, height, width) if crowd else []
        objects = sample_layout(rng, height, width)
        while True:
            composite = compose(background, [*members, *objects])
            counts = np.bincount(
                composite.labels.ravel(), minlength=len(members) + len(objects) + 1
            )
            crowd_pixels = int(counts[1 : len(members) + 1].sum())
            keep = [
                placement
                for index, placement in enumerate(objects, start=len(members) + 1)
                if counts[index] >= MIN_VISIBLE_PIXELS
            ]
            if members and crowd_pixels < MIN_VISIBLE_PIXELS:
                members = []
            elif len(keep) == len(objects):
                break
            objects = keep
        sample = _annotate_image(rng, composite.image, composite.labels, members, objects)
        if any(obj.expressions for obj in sample.objects):
            return sample


def _annotate_image(
    rng: np.random.Generator,
    image: np.ndarray,
    labels: np.ndarray,
    members: Sequence[Placement],
    objects: Sequence[Placement],
) -> ImageSample:
    """Masks and expressions of a composed image whose labels number members then objects."""
    offset = len(members)
    masks = [labels == offset + 1 + index for index in range(len(objects))]
    height, width = labels.shape
    scene = [
        _facts(p.shape, mask_box(mask), height, width)
        for p, mask in zip(objects, masks, strict=True)
    ]
    # Crowd members follow the objects: never targets or anchors, but they can be confused
    # with them.
    for index, member in enumerate(members, start=1):
        mask = labels == index
        if mask.any():
            scene.append(_facts(member.shape, mask_box(mask), height, width))
    annotated = tuple(
        ImageObject(
            placement.shape,
            mask,
            tuple(
                sample_expressions(
                    rng, scene, index, int(rng.integers(1, 4)), num_named=len(objects)
                )
            ),
        )
        for index, (placement, mask) in enumerate(zip(objects, masks, strict=True))
    )
    crowd = None
    if members:
        crowd = Crowd(members[0].shape.category, (labels >= 1) & (labels <= offset))
    return ImageSample(image, annotated, crowd)


def _motions(boxes: np.ndarray, in_view: np.ndarray, height: int, width: int) -> list[str | None]:
    """Each object's direction of motion, None for objects that do not clearly move one way.

    An object moves in a direction when its box centre's net displacement between its first and
    last in-view frames is large and mostly along one axis. When any object moves in between
    (neither clearly one way nor clearly still), a reader could call it moving in the same
    direction as another, so no object of the video is given a motion.

    Args:
        boxes: (N, T, 4) ``[x, y, w, h]`` full boxes.
        in_view: (N, T) bool.
        height: frame height.
        width: frame width.
    """
    motions: list[str | None] = []
    for object_boxes, frames in zip(boxes, in_view, strict=True):
        first, last = np.flatnonzero(frames)[[0, -1]]
        centres = object_boxes[:, :2] + object_boxes[:, 2:] / 2.0  # (T, 2) x, y
        shift = (centres[last] - centres[first]) / np.array([width, height])
        axis = int(np.argmax(np.abs(shift)))
        if abs(shift[axis]) >= _MOTION_DISPLACEMENT and abs(shift[1 - axis]) <= 0.5 * abs(
            shift[axis]
        ):
            # MOTIONS is (left, right, up, down): axis 0 then 1, negative then positive.
            motions.append(MOTIONS[2 * axis + int(shift[axis] > 0)])
        elif abs(shift[axis]) < 0.5 * _MOTION_DISPLACEMENT:
            motions.append(None)
        else:
            return [None] * len(boxes)
    return motions


def render_video(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_frames: int,
    *,
    num_objects: tuple[int, int] = (1, 5),
    category_weights: Sequence[float] | None = None,
) -> VideoSample:
    """Samples and renders a video of moving shapes.

    The first object stays in or near the image, so most videos have an object visible in most
    frames; the others bounce, leave the view and come back, enter after the first frame, leave
    before the end, or cross in front of the first one. A video is redrawn in the rare case
    that none of its well-visible objects can be referred to.

    Args:
        rng: the random stream.
        height: frame height.
        width: frame width.
        num_frames: T.
        num_objects: inclusive range of the number of objects.
        category_weights: probabilities over :data:`CATEGORIES` (default uniform).
    """
    while True:
        background = make_background(rng, height, width)
        count = int(rng.integers(num_objects[0], num_objects[1] + 1))
        shapes = [
            sample_shape(rng, min(height, width), category_weights=category_weights)
            for _ in range(count)
        ]
        # The first object stays around (and sits at the back); the others bounce, roam out
        # of view and back, enter, leave, or cross in front of the first one.
        first = sample_trajectory(
            rng, shapes[0].radius, height, width, num_frames, _FIRST_MOTIONS[rng.integers(3)]
        )
        paths = [first]
        for shape in shapes[1:]:
            motion = _OTHER_MOTIONS[rng.integers(len(_OTHER_MOTIONS))]
            frame = int(rng.integers(num_frames))
            meet = (float(first[frame, 0]), float(first[frame, 1]), frame)
            paths.append(
                sample_trajectory(rng, shape.radius, height, width, num_frames, motion, meet=meet)
            )
        composites = [
            compose(
                background, [Placement(s, *path[t]) for s, path in zip(shapes, paths, strict=True)]
            )
            for t in range(num_frames)
        ]
        sample = _annotate_video(rng, shapes, composites)
        if sample is not None:
            return sample


def _annotate_video(
    rng: np.random.Generator,
    shapes: Sequence[Shape],
    composites: Sequence[Composite],
) -> VideoSample | None:
    """Tracks and expressions of composed frames, or None when nothing can be referred to."""
    num_frames = len(composites)
    height, width = composites[0].labels.shape
    labels = np.stack([composite.labels for composite in composites])  # (T, H, W)
    visible = np.stack(
        [np.bincount(c.labels.ravel(), minlength=len(shapes) + 1)[1:] for c in composites], axis=1
    )  # (N, T)
    present = visible >= MIN_VISIBLE_PIXELS
    # Track ids by first appearance, so that ids grow as objects come into view.
    kept = sorted(
        (index for index in range(len(shapes)) if present[index].any()),
        key=lambda index: (int(np.argmax(present[index])), index),
    )
    # (T, N + 1) lookup from composite label to track id; absent objects map to background.
    lookup = np.zeros((num_frames, len(shapes) + 1), dtype=np.uint8)
    for track_id, index in enumerate(kept, start=1):
        lookup[present[index], index + 1] = track_id
    labels = lookup[np.arange(num_frames)[:, None, None], labels]  # (T, H, W)
    in_view = np.stack([c.in_view for c in composites], axis=1)  # (N, T)
    amodal_boxes = np.stack([c.amodal_boxes for c in composites], axis=1)  # (N, T, 4)
    view_boxes = np.stack([c.view_boxes for c in composites], axis=1)  # (N, T, 4)
    motions = _motions(amodal_boxes[kept], in_view[kept], height, width)
    # Positions change over a video, so expressions use no relations and the centre (the mean
    # over the frames where the object is visible) only completes the facts.
    scene = [
        _facts(shapes[index], view_boxes[index][present[index]].mean(axis=0), height, width, motion)
        for index, motion in zip(kept, motions, strict=True)
    ]
    referable = [k for k, index in enumerate(kept) if present[index].mean() >= _REFERABLE_SHARE]
    targets = set(rng.permutation(referable)[:2].tolist())
    expressions = [
        tuple(sample_expressions(rng, scene, k, int(rng.integers(1, 3)), spatial=False))
        if k in targets
        else ()
        for k in range(len(kept))
    ]
    if not any(expressions):
        return None
    tracks = tuple(
        Track(
            track_id=k + 1,
            shape=shapes[index],
            present=present[index],
            in_view=in_view[index],
            visible_pixels=visible[index],
            amodal_areas=np.array([c.amodal_areas[index] for c in composites]),
            amodal_boxes=amodal_boxes[index],
            view_boxes=view_boxes[index],
            view_areas=np.array([c.view_areas[index] for c in composites]),
            expressions=expressions[k],
            description=phrases(scene[k])[-1].text,
        )
        for k, index in enumerate(kept)
    )
    return VideoSample(np.stack([c.image for c in composites]), labels, tracks)
