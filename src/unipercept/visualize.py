"""Pictures of results for people to look at: :func:`draw_instances` paints boxes, masks and
captions onto an image, :func:`color_for` gives each track or category its own colour and
:func:`save_png` writes the picture (frames of a video go to
:class:`~unipercept.data.video.VideoWriter` instead).
"""

from __future__ import annotations

import colorsys
import functools
import math
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from unipercept.structures.instances import Instances
from unipercept.structures.masks import RLEMasks, masks_to_boxes

# Stepping the hue by the golden ratio's fraction spreads consecutive keys far apart on the
# colour wheel and never repeats a hue exactly.
_GOLDEN_RATIO_FRACTION = 0.618033988749895
_CAPTION_PADDING = 1


def color_for(key: int) -> tuple[int, int, int]:
    """A distinct, stable colour for a track id, label or index.

    The same key always gives the same colour; consecutive keys lie about 137 degrees apart in
    hue, so neighbouring ids are easy to tell apart.

    Args:
        key: any integer (negative ones too).

    Returns:
        ``(r, g, b)`` in 0..255.
    """
    hue = (int(key) * _GOLDEN_RATIO_FRACTION) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)


def _check_image(image: Tensor, name: str = "image") -> None:
    if not isinstance(image, Tensor):
        raise ValueError(f"{name} must be a (3, H, W) uint8 tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(
            f"{name} must be a (3, H, W) uint8 tensor, got {image.dtype} {tuple(image.shape)}"
        )


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _style(height: int, width: int) -> tuple[int, int]:
    """(font size, box line width) in pixels for an image: both grow with its shorter side, so
    captions stay small on a 320x256 frame and readable on a 1920x1080 one."""
    short = min(height, width)
    return min(max(round(short * 0.035), 9), 40), max(2, round(short / 240))


def _relative_luminance(color: tuple[int, int, int]) -> float:
    """WCAG relative luminance of an sRGB colour, in [0, 1]."""
    linear = [
        c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
        for c in (channel / 255 for channel in color)
    ]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _text_color(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio on ``background``."""
    luminance = _relative_luminance(background)
    contrast_black = (luminance + 0.05) / 0.05
    contrast_white = 1.05 / (luminance + 0.05)
    return (0, 0, 0) if contrast_black >= contrast_white else (255, 255, 255)


def _inner_contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of an (H, W) bool mask with a 4-neighbour outside it (or outside the image)."""
    padded = np.pad(mask, 1, constant_values=False)  # (H + 2, W + 2)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]  # (H, W)
    return mask & ~interior


def _caption(
    index: int,
    instances: Instances,
    names: Sequence[str] | None,
    show_scores: bool,
) -> str:
    parts = []
    if instances.track_ids is not None:
        parts.append(f"#{int(instances.track_ids[index])}")
    if instances.labels is not None:
        label = int(instances.labels[index])
        parts.append(names[label] if names is not None and 0 <= label < len(names) else str(label))
    if show_scores and instances.scores is not None:
        parts.append(f"{float(instances.scores[index]):.2f}")
    return " ".join(parts)


def _pixel_box(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int] | None:
    """An xyxy box (pixel edges) as the inclusive pixel rectangle PIL draws, clipped to the
    image; None when it is not finite or lies wholly outside."""
    if not all(math.isfinite(v) for v in box):
        return None
    x0, y0 = max(round(box[0]), 0), max(round(box[1]), 0)
    # x1, y1 are the far pixel edges, so the last pixel covered is one before them.
    x1, y1 = min(round(box[2]) - 1, width - 1), min(round(box[3]) - 1, height - 1)
    if x0 >= width or y0 >= height or x1 < 0 or y1 < 0:
        return None
    return x0, y0, max(x1, x0), max(y1, y0)


Rect = tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


def _overlap(a: Rect, b: Rect) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _place_caption(
    size: tuple[int, int], box: tuple[int, int, int, int], taken: list[Rect], image: tuple[int, int]
) -> Rect:
    """Where a caption of ``size`` (width, height) goes for a box (inclusive pixel corners):
    above the box's top-left, else inside it below the top edge, else under the box, then the
    same spots right-aligned with the box, shifted to stay inside the image; the first spot
    free of the captions already ``taken``, or the one that overlaps them least."""
    (caption_width, caption_height), (height, width) = size, image
    x0, y0, x1, y1 = box
    right = x1 + 1 - caption_width  # right-aligned with the box
    candidates = [
        (x0, y0 - caption_height),
        (x0, y0),
        (x0, y1 + 1),
        (right, y0 - caption_height),
        (right, y0),
        (right, y1 + 1 - caption_height),
        (right, y1 + 1),
    ]
    best: tuple[int, Rect] | None = None
    for x, y in candidates:
        left = max(min(x, width - caption_width), 0)
        top = max(min(y, height - caption_height), 0)
        rect = (left, top, left + caption_width, top + caption_height)
        overlap = sum(_overlap(rect, other) for other in taken)
        if overlap == 0:
            return rect
        if best is None or overlap < best[0]:
            best = (overlap, rect)
    assert best is not None
    return best[1]


def _draw_caption(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    rect: Rect,
    color: tuple[int, int, int],
) -> None:
    """Draws ``text`` on a filled background of ``color`` filling ``rect``."""
    left, top, _, _ = draw.textbbox((0, 0), text, font=font)
    draw.rectangle((rect[0], rect[1], rect[2] - 1, rect[3] - 1), fill=color)
    draw.text(
        (rect[0] + _CAPTION_PADDING - left, rect[1] + _CAPTION_PADDING - top),
        text,
        fill=_text_color(color),
        font=font,
    )


def draw_instances(
    image: Tensor,
    instances: Instances,
    *,
    names: Sequence[str] | None = None,
    mask_alpha: float = 0.5,
    show_scores: bool = True,
) -> Tensor:
    """Paints instances onto a copy of an image.

    Each instance gets the colour :func:`color_for` gives its track id, else its label, else
    its index. Masks are blended in at ``mask_alpha`` and outlined by a 1-px contour in the full
    colour; boxes are outlines 2 px wide or more on large images. An instance with a box (or,
    lacking boxes, a non-empty mask) gets a caption ``"#<track id> <name> <score>"`` (the parts
    it has) at the box's top-left, on a background of its colour, in a font that grows with
    the image; captions stay inside the image and move (inside the box, under it) to avoid
    those already placed, the surest instances' first. Masks are drawn first, then boxes,
    then captions, so no mask or box hides a caption.

    Args:
        image: (3, H, W) uint8 RGB; not modified.
        instances: instances in the image's pixels; ``image_size`` must be ``(H, W)``. Any of
            boxes, masks, scores, labels and track ids may be absent.
        names: label index -> category name; a label outside ``names`` is shown as its number.
        mask_alpha: opacity of the mask colour, in [0, 1].
        show_scores: whether captions include the score.

    Returns:
        (3, H, W) uint8 RGB, a new tensor on the image's device.
    """
    _check_image(image)
    height, width = image.shape[1], image.shape[2]
    if tuple(instances.image_size) != (height, width):
        raise ValueError(
            f"instances.image_size must equal the image's (H, W) = {(height, width)}, "
            f"got {tuple(instances.image_size)}"
        )
    if not 0.0 <= mask_alpha <= 1.0:
        raise ValueError(f"mask_alpha must be in [0, 1], got {mask_alpha}")
    if len(instances) == 0:
        return image.clone()

    instances = instances.to("cpu")
    keys = instances.track_ids if instances.track_ids is not None else instances.labels
    key_list = keys.tolist() if keys is not None else list(range(len(instances)))
    colors = [color_for(key) for key in key_list]
    canvas = image.detach().cpu().permute(1, 2, 0).numpy().copy()  # (H, W, 3) uint8

    masks = instances.masks
    if isinstance(masks, RLEMasks):
        masks = masks.decode()
    if masks is not None:
        for mask, color in zip(masks.numpy(), colors, strict=True):
            tint = np.asarray(color, dtype=np.float32)  # (3,)
            blended = (1.0 - mask_alpha) * canvas[mask].astype(np.float32) + mask_alpha * tint
            canvas[mask] = np.rint(blended).astype(np.uint8)  # (num_pixels, 3)
            canvas[_inner_contour(mask)] = color

    # Captions sit at the box's top-left; without boxes, at that of the mask's tight box.
    anchor_boxes: list[list[float] | None]
    if instances.boxes is not None:
        anchor_boxes = instances.boxes.float().tolist()
    elif masks is not None:
        non_empty = masks.flatten(1).any(dim=1).tolist()
        anchor_boxes = [
            box if keep else None
            for box, keep in zip(masks_to_boxes(masks).tolist(), non_empty, strict=True)
        ]
    else:
        anchor_boxes = [None] * len(instances)
    pixel_boxes = [
        _pixel_box(box, height, width) if box is not None else None for box in anchor_boxes
    ]

    pil_image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil_image)
    font_size, line_width = _style(height, width)
    if instances.boxes is not None:
        for pixel_box, color in zip(pixel_boxes, colors, strict=True):
            if pixel_box is not None:
                draw.rectangle(pixel_box, outline=color, width=line_width)
    font = _font(font_size)
    order = range(len(instances))
    if instances.scores is not None:
        order = sorted(order, key=lambda i: -float(instances.scores[i]))  # surest placed first
    taken: list[Rect] = []
    for index in order:
        text = _caption(index, instances, names, show_scores)
        if pixel_boxes[index] is None or not text:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        size = (right - left + 2 * _CAPTION_PADDING, bottom - top + 2 * _CAPTION_PADDING)
        rect = _place_caption(size, pixel_boxes[index], taken, (height, width))
        taken.append(rect)
        _draw_caption(draw, text, font, rect, colors[index])

    result = torch.from_numpy(np.array(pil_image)).permute(2, 0, 1).contiguous()  # (3, H, W)
    return result.to(image.device)


def save_png(image: Tensor, path: str | os.PathLike[str]) -> Path:
    """Writes an image as PNG, atomically: readers see the old file or the whole new one.

    The PNG goes to a temporary file in the same folder, which then replaces ``path``; the
    temporary file is removed if writing fails. The file gets the permissions a plain
    ``open(path, "w")`` would give it (``0o666`` less the umask).

    Args:
        image: (3, H, W) uint8 RGB.
        path: where to write; its folder must exist.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    _check_image(image)
    path = Path(path)
    pixels = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()  # (H, W, 3)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # os.open with mode 0o666 lets the kernel apply the umask, as open() does; mkstemp's 0o600
    # would leave the final file unreadable to the group.
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            Image.fromarray(pixels).save(file, format="PNG")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
