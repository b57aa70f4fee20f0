"""Streaming video input and output: frames are decoded (or encoded) one at a time, so a video
of any length runs in constant memory. :func:`open_frames` picks the :class:`FrameSource` for a
video file, a folder, a glob pattern or a list of images; :class:`StreamSource` reads a live
source (a capture device, an RTSP or HTTP(S) stream); :class:`VideoWriter` writes MP4.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re
import stat
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from torch import Tensor

from unipercept.data.datasets.base import DatasetError
from unipercept.data.io import image_size, load_image

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def natural_key(path: str | Path) -> list[str | int]:
    """Sort key that orders runs of digits by value: ``frame2`` before ``frame10``."""
    # re.split with a group alternates text and digits, so keys compare str with str, int with int.
    parts = re.split(r"(\d+)", str(path))
    return [int(part) if index % 2 else part.lower() for index, part in enumerate(parts)]


@dataclass(frozen=True)
class VideoInfo:
    """What is known of a video before decoding it.

    Attributes:
        num_frames: frame count, or None when the container does not say.
        fps: frames per second, or None (image folders and lists have no rate).
        height: frame height in pixels.
        width: frame width in pixels.
    """

    num_frames: int | None
    fps: float | None
    height: int
    width: int


def _checked(frame: Tensor, path: str | Path, index: int, info: VideoInfo) -> Tensor:
    """``frame``, (3, H, W), once it is known to have the video's size."""
    if tuple(frame.shape[1:]) != (info.height, info.width):
        raise DatasetError(
            path,
            f"frame {index}",
            f"size {tuple(frame.shape[1:])} differs from the video's {(info.height, info.width)}",
        )
    return frame


class FrameSource(ABC):
    """Frames of one video, decoded one at a time; iterate it again to start over.

    Use it as a context manager (or call :meth:`close`) to release the open file.
    """

    info: VideoInfo

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        """Yields ``(index, frame)`` from index 0, ``frame`` (3, H, W) uint8 RGB."""

    def close(self) -> None:  # noqa: B027 (a no-op by default: not every source opens a file)
        """Releases open files; a source reading files one by one holds none."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class VideoFileSource(FrameSource):
    """Frames of a video file, decoded by PyAV (FFmpeg).

    Damage is reported as :class:`DatasetError` naming the file: an unreadable file, or one
    without a video stream, at construction; a decoding failure while iterating, after the frames
    before it were yielded (a truncated MP4 whose index is at its end fails at construction; one
    written with the index first, as :class:`VideoWriter` writes, yields the frames that are
    complete, then fails). A file that merely ends early (cut at a packet boundary) stops without
    error, with a logged warning when the container announced more frames.

    Args:
        path: the video file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._container: av.container.InputContainer | None = None
        container = self._open()
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate
            self.info = VideoInfo(
                num_frames=stream.frames or None,
                fps=float(rate) if rate else None,
                height=stream.codec_context.height,
                width=stream.codec_context.width,
            )
        finally:
            container.close()
        if self.info.height <= 0 or self.info.width <= 0:
            raise DatasetError(self.path, "video", "the video stream has no frame size")

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(str(self.path))
        except FileNotFoundError:
            raise DatasetError(self.path, "video", "file not found") from None
        except (av.FFmpegError, OSError) as error:
            raise DatasetError(self.path, "video", f"cannot be opened ({error})") from None
        if not container.streams.video:
            container.close()
            raise DatasetError(self.path, "video", "the file holds no video stream")
        return container

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        # A fresh container per pass: starting over needs no (codec-dependent) seek.
        self.close()
        # PyAV's default slice threading, not frame threading: frame threads swallow the error
        # of a truncated packet, and the file would end early without a word.
        container = self._container = self._open()
        index = 0
        try:
            for frame in container.decode(video=0):
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                yield index, _checked(pixels, self.path, index, self.info)
                index += 1
        except (av.FFmpegError, OSError) as error:
            raise DatasetError(self.path, f"frame {index}", str(error)) from None
        finally:
            self.close()
        if self.info.num_frames is not None and index < self.info.num_frames:
            logger.warning(
                "%s: decoded %d of the %d frames announced", self.path, index, self.info.num_frames
            )

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class ImageListSource(FrameSource):
    """Frames from image files in the given order, each read when it is reached.

    Every image must have the size of the first (:class:`DatasetError` naming the file when not).
    A missing file is a FileNotFoundError at construction, an empty list a ValueError.

    Args:
        paths: the image files, in frame order.
    """

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("paths must hold at least one image file, got none")
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"frame image not found: {path}")
        height, width = image_size(self.paths[0])
        self.info = VideoInfo(num_frames=len(self.paths), fps=None, height=height, width=width)

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        for index, path in enumerate(self.paths):
            yield index, _checked(load_image(path), path, index, self.info)


def image_files(folder_or_pattern: str | Path) -> list[Path]:
    """The image files (jpg, jpeg, png, bmp, webp; any case) in a folder or matching a glob
    pattern, in natural order (``frame2`` before ``frame10``); possibly none."""
    if Path(folder_or_pattern).is_dir():
        candidates = Path(folder_or_pattern).iterdir()
    else:
        candidates = (Path(p) for p in glob.glob(str(folder_or_pattern), recursive=True))
    found = [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(found, key=natural_key)


class FolderSource(ImageListSource):
    """Frames from every image file in a folder (jpg, jpeg, png, bmp, webp; any case), in natural
    order (``frame2`` before ``frame10``); a folder without images is a :class:`DatasetError`.

    Args:
        folder: the folder of frame images.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"frame folder not found: {self.folder}")
        paths = image_files(self.folder)
        if not paths:
            raise DatasetError(
                self.folder, "folder", f"holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        super().__init__(paths)


def open_frames(path: str | Path | Sequence[str | Path]) -> FrameSource:
    """The frame source for a video file, a folder of images, a glob pattern or a list of images.

    A video file (mp4, avi, mov, mkv, webm, m4v, or any other suffix but an image's) is read by
    PyAV; an image file is a one-frame video; a glob pattern's image files are sorted
    naturally; a list keeps its order.

    Args:
        path: a file, a folder, a glob pattern (``"frames/*.jpg"``) or a sequence of image paths.

    Returns:
        the frame source; close it when done (``with open_frames(...) as frames:``).

    Raises:
        FileNotFoundError: nothing at ``path``, or a pattern that matches no image.
        DatasetError: an empty folder, or a file that cannot be read.
    """
    if not isinstance(path, str | Path):
        return ImageListSource(list(path))
    candidate = Path(path)
    if candidate.is_dir():
        return FolderSource(candidate)
    if candidate.is_file():
        if candidate.suffix.lower() in IMAGE_SUFFIXES:
            return ImageListSource([candidate])
        return VideoFileSource(candidate)
    if re.search(r"[*?[]", str(path)):
        matches = image_files(path)
        if not matches:
            raise FileNotFoundError(f"no image file matches the pattern {path}")
        return ImageListSource(matches)
    raise FileNotFoundError(f"no video file, frame folder or pattern at {path}")


STREAM_SCHEMES = ("rtsp://", "http://", "https://")
_DEVICE_NUMBER = re.compile(r"\d+")
_DEVICE_PATH = re.compile(r"/dev/video\d+")


def is_stream(location: str | Path) -> bool:
    """Whether ``location`` names a live source rather than files: an ``rtsp://``, ``http://``
    or ``https://`` URL, a capture device (a character device such as ``/dev/video0``, or a
    ``/dev/videoN`` that is not there, to be reported as such) or a bare device number (``0``)
    that is not also the name of a file or folder here. Other paths under ``/dev`` (a folder in
    ``/dev/shm``) are files."""
    text = str(location)
    if text.lower().startswith(STREAM_SCHEMES):
        return True
    if text.startswith("/dev/"):
        try:
            return stat.S_ISCHR(os.stat(text).st_mode)
        except OSError:
            return bool(_DEVICE_PATH.fullmatch(text))
    return bool(_DEVICE_NUMBER.fullmatch(text)) and not Path(text).exists()


def _stream_target(location: str) -> tuple[str, str | None]:
    """What FFmpeg opens for a live source, and its input format (None: from the URL).

    Raises:
        FileNotFoundError: a device path with no device behind it.
        ValueError: a device number on a system without a known capture format.
    """
    if location.lower().startswith(STREAM_SCHEMES):
        return location, None
    if _DEVICE_NUMBER.fullmatch(location):
        if sys.platform == "darwin":
            return location, "avfoundation"
        if not sys.platform.startswith("linux"):
            raise ValueError(
                f"capture device {location}: device numbers are read on Linux (/dev/videoN) "
                "and macOS only"
            )
        location = f"/dev/video{location}"
    try:
        mode = os.stat(location).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"no capture device {location}") from None
    if not stat.S_ISCHR(mode):
        raise ValueError(f"{location} is not a capture device (a character device file)")
    return location, "v4l2"


class StreamSource(FrameSource):
    """Frames of a live source, decoded by PyAV (FFmpeg) as they arrive: a capture device
    (``/dev/video0``, or ``0`` for it; on macOS a device number through AVFoundation) or an
    ``rtsp://``, ``http://`` or ``https://`` URL.

    The source is opened at construction (failures are :class:`DatasetError` naming it) and
    stays open for the first pass; iterating again reconnects, so a live source gives new
    frames, not the same ones. :attr:`info` has ``num_frames`` only when the stream announces a
    length (a file served over HTTP), and ``fps`` when the stream gives a rate. Every frame must
    keep the first one's size.

    Args:
        location: the device or URL.
        timeout: seconds to wait for the connection and then for each read before the stream
            counts as broken (None: wait forever).
    """

    def __init__(self, location: str, *, timeout: float | None = 30.0) -> None:
        self.location = location
        self.timeout = timeout
        try:
            self._target, self._format = _stream_target(location)
        except (FileNotFoundError, ValueError) as error:
            raise DatasetError(location, "live source", str(error)) from None
        self._container: av.container.InputContainer | None = self._open()
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.info = VideoInfo(
            num_frames=stream.frames or None,
            fps=float(rate) if rate else None,
            height=stream.codec_context.height,
            width=stream.codec_context.width,
        )
        if self.info.height <= 0 or self.info.width <= 0:
            self.close()
            raise DatasetError(location, "live source", "the video stream has no frame size")

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(self._target, format=self._format, timeout=self.timeout)
        except (av.FFmpegError, OSError) as error:
            problem = f"cannot be opened ({error})"
            raise DatasetError(self.location, "live source", problem) from None
        if not container.streams.video:
            container.close()
            raise DatasetError(self.location, "live source", "it holds no video stream")
        return container

    def __iter__(self) -> Iterator[tuple[int, Tensor]]:
        container = self._container or self._open()
        self._container = container
        index = 0
        try:
            for frame in container.decode(video=0):
                pixels = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                yield index, _checked(pixels, self.location, index, self.info)
                index += 1
        except (av.FFmpegError, OSError) as error:
            raise DatasetError(self.location, f"frame {index}", str(error)) from None
        finally:
            self.close()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class VideoWriter:
    """Encodes frames into an MP4 file (H.264 by libx264 where PyAV has it, else MPEG-4 part 2;
    yuv420p; the index first, so the file plays while it downloads).

    The video is written to ``path + ".tmp"`` and renamed to ``path`` by :meth:`close`, so a
    reader never sees a half-written file; when the ``with`` block raises, the temporary file is
    removed and a file already at ``path`` is left untouched. yuv420p needs an even size: an odd
    ``width`` or ``height`` is padded by one column or row repeating the edge.

    Args:
        path: the ``.mp4`` (or ``.m4v``, ``.mov``) file to write; its folder must exist.
        fps: frames per second, positive.
        width: frame width in pixels, positive.
        height: frame height in pixels, positive.

    Example:
        >>> with VideoWriter("overlay.mp4", fps=25, width=640, height=480) as writer:
        ...     for frame in frames:
        ...         writer.write(frame)
    """

    def __init__(self, path: str | Path, *, fps: float, width: int, height: int) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".m4v", ".mov"):
            raise ValueError(f"path must end in .mp4, .m4v or .mov, got {self.path}")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not 0 < fps < math.inf:
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.fps, self.width, self.height = fps, width, height
        self._temp = self.path.with_name(self.path.name + ".tmp")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        # The muxer is named because the ".tmp" suffix hides the format; faststart puts the index
        # before the frames.
        self._container = av.open(
            str(self._temp), mode="w", format="mp4", options={"movflags": "+faststart"}
        )
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = "yuv420p"
        self._count = 0
        self._closed = False

    def write(self, frame: Tensor) -> None:
        """Appends one frame.

        Args:
            frame: (3, height, width) uint8 RGB.
        """
        if self._closed:
            raise ValueError(f"VideoWriter for {self.path} is closed")
        if not isinstance(frame, Tensor) or tuple(frame.shape) != (3, self.height, self.width):
            raise ValueError(
                f"frame must have shape (3, {self.height}, {self.width}), "
                f"got {getattr(frame, 'shape', type(frame).__name__)}"
            )
        if frame.dtype != torch.uint8:
            raise ValueError(f"frame must be uint8, got {frame.dtype}")
        pixels = frame.permute(1, 2, 0).cpu().numpy()  # (H, W, 3)
        pad = ((0, self.height % 2), (0, self.width % 2), (0, 0))
        pixels = np.ascontiguousarray(np.pad(pixels, pad, mode="edge"))
        video_frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        video_frame.pts = self._count
        self._container.mux(self._stream.encode(video_frame))
        self._count += 1

    def close(self) -> None:
        """Flushes the encoder and moves the finished file to ``path``; closing twice is a no-op."""
        if self._closed:
            return
        try:
            self._container.mux(self._stream.encode(None))  # the frames the encoder still holds
            self._container.close()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        os.replace(self._temp, self.path)

    def abort(self) -> None:
        """Stops writing and removes the temporary file; ``path`` is left as it was."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.close()
        except (av.FFmpegError, OSError):
            # The file is being thrown away; its failure to close changes nothing.
            logger.debug("closing the aborted video %s failed", self._temp, exc_info=True)
        self._temp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
