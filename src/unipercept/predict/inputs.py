"""The job's inputs: image files, videos (one, a folder of them, or a live source), the sot/vos
first-frame box or mask, the device."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipercept.predict.job import InputError, Job

if TYPE_CHECKING:
    from torch import Tensor

logger = logging.getLogger("unipercept.predict")
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"})


def is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def image_inputs(path: str) -> list[Path] | None:
    """The image files of an image, a folder or a pattern (None for a video file)."""
    from unipercept.data.video import IMAGE_SUFFIXES, image_files

    candidate = Path(path)
    if candidate.is_file():
        return [candidate] if candidate.suffix.lower() in IMAGE_SUFFIXES else None
    if not candidate.is_dir() and not is_pattern(path):
        raise InputError(f"--input {path}: no such file, folder or pattern")
    files = image_files(path)
    if not files:
        what = "the folder holds" if candidate.is_dir() else "the pattern matches"
        suffixes = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        hint = ""
        if candidate.is_dir() and any(
            p.suffix.lower() in VIDEO_SUFFIXES for p in candidate.iterdir()
        ):
            hint = "; a folder of videos is for the video tasks (or give one video)"
        raise InputError(f"--input {path}: {what} no image file ({suffixes}){hint}")
    return files


def check_images(files: Sequence[Path]) -> list[tuple[int, int]]:
    """(height, width) of every image, read from its header (fails early on a non-image)."""
    from unipercept.data.io import image_size

    sizes = []
    for file in files:
        try:
            sizes.append(image_size(file))
        except (ValueError, OSError) as error:
            raise InputError(f"--input: {error}") from None
    return sizes


def open_video(path: str):
    """The frame source of a video file, a folder or pattern of frames, or a live source."""
    from unipercept.data.datasets.base import DatasetError
    from unipercept.data.video import StreamSource, is_stream, open_frames

    try:
        if is_stream(path):
            return StreamSource(path)
        return open_frames(path)
    except DatasetError as error:  # it names the input
        raise InputError(f"--input: {error}") from None
    except (ValueError, OSError) as error:
        raise InputError(f"--input {path}: {error}") from None


class Video:
    """One opened video: its frames as ``(index, frame)``, the first one possibly read ahead
    (sot/vos check their prompt on it, and a live source cannot give it twice).

    Args:
        location: a video file, a folder or pattern of frames, or a live source.
    """

    def __init__(self, location: str) -> None:
        self.location = location
        self.source = open_video(location)
        self.info = self.source.info
        self._frames = iter(self.source)
        self._ahead: list[tuple[int, Any]] = []

    def first_frame(self) -> Tensor:
        """(3, H, W) uint8: frame 0, read ahead (the iteration still starts with it)."""
        from unipercept.data.datasets.base import DatasetError

        if not self._ahead:
            try:
                self._ahead.append(next(self._frames))
            except StopIteration:
                raise InputError(f"--input {self.location}: the video has no frame") from None
            except DatasetError as error:
                raise InputError(f"--input: {error}") from None
        return self._ahead[0][1]

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """Yields ``(index, frame)``; a damaged frame raises DatasetError."""
        while self._ahead:
            yield self._ahead.pop(0)
        yield from self._frames

    def close(self) -> None:
        self.source.close()


def video_name(location: str) -> str:
    """The name of a video's outputs (``<name>.overlay.mp4``): a file's or folder's stem, a
    URL's last path part, ``frames`` for a pattern."""
    from urllib.parse import urlsplit

    from unipercept.data.video import STREAM_SCHEMES

    if location.lower().startswith(STREAM_SCHEMES):
        return Path(urlsplit(location).path).stem or "stream"
    if is_pattern(location):
        return "frames"
    return Path(location.rstrip("/")).stem or "video"


def video_inputs(path: str) -> list[tuple[str, str]] | None:
    """The videos of a folder of videos, as ``(name, path)`` in natural order: its video files
    (mp4, avi, mkv, mov, webm, m4v) and sub-folders of frames; None when ``path`` is one video
    (a file, a pattern, a live source or a folder of frames). A name is the video's stem, or
    its whole file name where two stems are alike.

    Raises:
        InputError: a folder holding both frames and videos, or neither.
    """
    from unipercept.data.video import image_files, natural_key

    folder = Path(path)
    if not folder.is_dir():
        return None
    entries = sorted(
        (
            entry
            for entry in folder.iterdir()
            if not entry.name.startswith(".")
            and (
                (entry.is_file() and entry.suffix.lower() in VIDEO_SUFFIXES)
                or (entry.is_dir() and image_files(entry))
            )
        ),
        key=natural_key,
    )
    if image_files(folder):
        if entries:
            raise InputError(
                f"--input {path}: the folder holds both frame images and videos ("
                f"{entries[0].name}); give one video, or a folder of videos alone"
            )
        return None
    if not entries:
        suffixes = ", ".join(sorted(s.lstrip(".") for s in VIDEO_SUFFIXES))
        raise InputError(
            f"--input {path}: the folder holds no frame image, video file ({suffixes}) or "
            "folder of frames"
        )
    stems = [entry.stem for entry in entries]
    return [
        (entry.stem if stems.count(entry.stem) == 1 else entry.name, str(entry))
        for entry in entries
    ]


def parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.replace(" ", "").split(",")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--box {text!r}: expected four numbers x,y,w,h (pixels)") from None
    if not all(map(lambda v: v == v and abs(v) != float("inf"), (x, y, w, h))):
        raise InputError(f"--box {text!r}: expected finite numbers")
    if w <= 0 or h <= 0:
        raise InputError(f"--box {text!r}: width and height must be positive")
    return x, y, w, h


def annotation_prompts(job: Job, first_frame):
    """The first frame's AnnotationPrompt(s) from --box or --mask."""
    import numpy as np
    import torch

    from unipercept.structures import AnnotationPrompt

    height, width = first_frame.shape[1:]
    if job.box is not None:
        x, y, w, h = job.box
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise InputError(
                f"--box {x:g},{y:g},{w:g},{h:g} is outside the first frame ({width}x{height})"
            )
        return [AnnotationPrompt(first_frame, box=[x, y, x + w, y + h])]
    array = read_mask(job.mask)
    if array.shape[:2] != (height, width):
        raise InputError(
            f"--mask {job.mask} is {array.shape[1]}x{array.shape[0]}, the first frame "
            f"{width}x{height}"
        )
    values = [int(v) for v in np.unique(array) if v != 0]
    if not values:
        raise InputError(f"--mask {job.mask}: the mask is empty (all zero)")
    # 255 is DAVIS's "void" beside object indices, and the object in a 0/255 binary mask.
    objects = [v for v in values if v != 255] or values
    if job.task == "sot" and len(objects) > 1:
        raise InputError(
            f"--mask {job.mask}: sot follows one target, the mask has {len(objects)} objects "
            "(use --task vos)"
        )
    return [
        AnnotationPrompt(first_frame, mask=torch.from_numpy(array == value)) for value in objects
    ]


def read_mask(path: str):
    """(H, W) uint8 object ids of a first-frame mask: a palette PNG's indices, or one object
    (id 1) for any other image. A non-palette mask with more than two levels (a JPEG's
    compression noise, anti-aliased edges) is binarised at half its largest value, with a
    warning: its levels are not object ids."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode == "P":
                return np.array(image)
            from unipercept.data.io import load_image

            grey = load_image(path).max(dim=0).values.numpy()  # (H, W): any channel lit
    except FileNotFoundError:
        raise InputError(f"--mask {path}: file not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise InputError(f"--mask {path}: cannot be read as an image ({error})") from None
    except ValueError as error:  # load_image's DatasetError
        raise InputError(f"--mask {error}") from None
    levels = np.unique(grey)
    if len(levels) > 2:
        logger.warning(
            "--mask %s: not a palette or binary mask (%d grey levels, e.g. JPEG compression); "
            "read as one object, pixels above %d (save a palette PNG to give several objects)",
            path,
            len(levels),
            int(levels[-1]) // 2,
        )
    return (grey > int(levels[-1]) // 2).astype(np.uint8)


def parse_device(text: str):
    """``--device``: auto (CUDA when there is one), cpu, cuda or cuda:N."""
    import torch

    from unipercept.modeling.pretrained import check_device

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return check_device(text)
    except ValueError as error:
        raise InputError(f"--{error}") from None
