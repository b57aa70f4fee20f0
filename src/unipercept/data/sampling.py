"""Turning samples into training clips: frame choice for video tasks, template pairs for
SOT/VOS, and pseudo-videos made from still images (UNINEXT's stage 3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from unipercept.data.io import load_image
from unipercept.data.transforms import Clip, crop_frame, dense_targets, resize_frame
from unipercept.data.types import Frame, Sample
from unipercept.structures import Instances


def frame_target(frame: Frame) -> Instances:
    """The frame's annotations as training targets: dense masks, crowd/ignore regions left out
    (DETR-style matching has no use for them)."""
    target = frame.instances
    if frame.ignore is not None and bool(frame.ignore.any()):
        target = target[~frame.ignore]
    return dense_targets(target)


def clip_from_frames(sample: Sample, indices: Sequence[int]) -> Clip:
    """Loads the chosen frames of a sample (pixels from disk) into a :class:`Clip`."""
    frames = [sample.frames[i] for i in indices]
    return Clip(
        images=tuple(load_image(f.image) for f in frames),
        targets=tuple(frame_target(f) for f in frames),
        expressions=tuple(e.text for e in sample.expressions),
        expression_targets=tuple(e.target_ids for e in sample.expressions),
    )


def sample_clip_indices(
    num_frames: int, length: int, window: int, generator: torch.Generator
) -> list[int]:
    """``length`` frame indices in time order, all within ``window`` consecutive frames
    (MOT/VIS training reads a key frame and nearby reference frames). A video shorter than
    ``length`` repeats frames.
    """
    if num_frames < 1 or length < 1 or window < 1:
        raise ValueError(
            f"need positive num_frames, length and window, got {num_frames}, {length}, {window}"
        )
    span = min(window, num_frames)
    start = int(torch.randint(num_frames - span + 1, (1,), generator=generator))
    if span >= length:
        chosen = torch.randperm(span, generator=generator)[:length]
    else:
        chosen = torch.randint(span, (length,), generator=generator)
    return sorted(start + int(i) for i in chosen)


def _track_ids(frame: Frame) -> list[int]:
    """Identities of the frame's objects a prompt may point at (crowd/ignore regions are not
    objects)."""
    ids = frame.instances.track_ids
    if not frame.annotated or ids is None:
        return []
    if frame.ignore is not None:
        ids = ids[~frame.ignore]
    return [int(i) for i in ids.tolist()]


def _visible(frame: Frame, track_id: int) -> bool:
    return track_id in _track_ids(frame)


def sample_template_pair(
    sample: Sample, max_gap: int, generator: torch.Generator
) -> tuple[int, int, int]:
    """An object and two frames where it is visible, at most ``max_gap`` apart: the template
    frame (the annotation prompt's) and the search frame (SOT/VOS training).

    Returns:
        (template_index, search_index, track_id).

    Raises:
        ValueError: no object of the sample is visible in any annotated frame.
    """
    tracks = sorted({i for f in sample.frames for i in _track_ids(f)})
    if not tracks:
        raise ValueError(f"{sample.dataset} sample {sample.sample_id} has no visible object")
    track = tracks[int(torch.randint(len(tracks), (1,), generator=generator))]
    visible = [i for i, f in enumerate(sample.frames) if _visible(f, track)]
    template = visible[int(torch.randint(len(visible), (1,), generator=generator))]
    near = [i for i in visible if abs(i - template) <= max_gap]
    search = near[int(torch.randint(len(near), (1,), generator=generator))]
    return template, search, track


def jitter_box(
    box: Tensor,
    image_size: tuple[int, int],
    generator: torch.Generator,
    center_jitter: float = 0.25,
    scale_jitter: float = 0.25,
) -> Tensor:
    """Moves an xyxy box's centre by up to ``center_jitter`` times its size and scales it by
    up to exp(+-``scale_jitter``), as trackers jitter their templates so the model does not
    learn that the prompt is perfectly centred. The result stays inside the image with
    positive size."""
    x1, y1, x2, y2 = box.tolist()
    width, height = x2 - x1, y2 - y1
    noise = torch.rand(4, generator=generator) * 2 - 1
    scale = math.exp(float(noise[2]) * scale_jitter)
    extent = math.sqrt(max(width * height, 1.0))
    cx = (x1 + x2) / 2 + float(noise[0]) * center_jitter * extent
    cy = (y1 + y2) / 2 + float(noise[1]) * center_jitter * extent
    width, height = width * scale, height * math.exp(float(noise[3]) * scale_jitter)
    image_h, image_w = image_size
    out = torch.tensor([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2])
    out[0::2] = out[0::2].clamp(0, image_w)
    out[1::2] = out[1::2].clamp(0, image_h)
    if out[2] - out[0] < 1 or out[3] - out[1] < 1:
        return box.clone().float()
    return out


def pseudo_video(
    image: Tensor,
    target: Instances,
    length: int,
    generator: torch.Generator,
    min_fraction: float = 0.7,
    expressions: Sequence[str] = (),
    expression_targets: Sequence[tuple[int, ...]] = (),
) -> Clip:
    """A clip made from one still image: every frame is a different random crop (same aspect
    ratio, at least ``min_fraction`` of each side) resized back to the image's size, so
    objects move and zoom as in a video while keeping their identity (``track_ids``). Frames
    where a crop removed an object simply lack it."""
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    height, width = image.shape[1:]
    full = dense_targets(target)
    images, targets = [], []
    for _ in range(length):
        fraction = min_fraction + (1 - min_fraction) * float(torch.rand((), generator=generator))
        crop_h, crop_w = max(1, round(height * fraction)), max(1, round(width * fraction))
        top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
        cropped, cropped_target = crop_frame(image, full, top, left, crop_h, crop_w)
        resized, resized_target = resize_frame(cropped, cropped_target, (height, width))
        images.append(resized)
        targets.append(resized_target)
    return Clip(
        images=tuple(images),
        targets=tuple(targets),
        expressions=tuple(expressions),
        expression_targets=tuple(expression_targets),
    )


def _crop_side(extent: int, fraction: float) -> int:
    return max(1, min(extent, round(extent * fraction)))


def zoom_crop(
    image: Tensor,
    target: Instances,
    track_id: int,
    generator: torch.Generator,
    *,
    min_fraction: float = 0.5,
    absent: bool = False,
    attempts: int = 10,
) -> tuple[Tensor, Instances] | None:
    """A random crop of the frame (same aspect ratio, at least ``min_fraction`` of each side)
    resized back to the frame's size: the search frame of a pseudo-video, where the target has
    moved and changed scale (up to ``1 / min_fraction``).

    With ``absent`` the crop must leave the target out entirely (the target is gone: the
    model must answer "not found"); otherwise it must keep part of it. Returns None when no
    such crop is found in ``attempts`` draws.
    """
    height, width = image.shape[1:]
    full = dense_targets(target)
    if full.track_ids is None or not bool((full.track_ids == track_id).any()):
        raise ValueError(f"object {track_id} is not in the frame to crop")
    for _ in range(attempts):
        fraction = min_fraction + (1 - min_fraction) * float(torch.rand((), generator=generator))
        crop_h, crop_w = _crop_side(height, fraction), _crop_side(width, fraction)
        top = int(torch.randint(height - crop_h + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop_w + 1, (1,), generator=generator))
        cropped, cropped_target = crop_frame(image, full, top, left, crop_h, crop_w)
        kept = bool((cropped_target.track_ids == track_id).any())
        if kept != absent:
            return resize_frame(cropped, cropped_target, (height, width))
    return None


def invisible_frames(sample: Sample, track_id: int, near: int, max_gap: int) -> list[int]:
    """Annotated frames within ``max_gap`` of ``near`` where the object is not visible (it left
    the view, or has not entered yet)."""
    return [
        i
        for i, frame in enumerate(sample.frames)
        if frame.annotated and abs(i - near) <= max_gap and not _visible(frame, track_id)
    ]
