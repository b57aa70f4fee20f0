"""MOTChallenge and MOTS result files: reading them into typed rows and writing tracked
instances as them (atomically).

File formats::

    MOTChallenge (gt and results): frame,id,x,y,w,h,conf,class,visibility[,unused]
        frames from 1; boxes x, y, w, h in pixels; results write conf = score, rest -1.
    MOTS / KITTI-MOTS: frame id class_id height width rle   (space separated)
        id = class_id * 1000 + instance; class 10 marks ignore regions; MOTS20 counts frames
        from 1, KITTI-MOTS from 0 (only the order of frames matters to the metrics).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np

from unipercept.data.io import write_text_atomic
from unipercept.structures import Instances

MOTS_PEDESTRIAN = 2  # MOTS20 / KITTI-MOTS class 2 (KITTI-MOTS cars are class 1)


@dataclass(frozen=True)
class MotRows:
    """The rows of one MOTChallenge txt file (gt or results), N rows.

    Attributes:
        frames: (N,) int64 frame numbers as written (from 1).
        ids: (N,) int64 track or object ids.
        boxes: (N, 4) float64 ``x, y, w, h`` in pixels.
        scores: (N,) float64 7th column: a result's score, a gt row's ``conf`` (0 = not
            evaluated); 1 when the file has only 6 columns.
        classes: (N,) float64 8th column: the class of MOT16/17/20 gt (1 pedestrian, ...),
            -1 in results; MOT15 gt holds unused world coordinates there. -1 when absent.
    """

    frames: np.ndarray
    ids: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


@dataclass(frozen=True)
class MotsRows:
    """The rows of one MOTS / KITTI-MOTS txt file, N rows.

    Attributes:
        frames: (N,) int64 frame numbers as written.
        ids: (N,) int64 object ids (``class_id * 1000 + instance`` by convention).
        classes: (N,) int64 class ids (MOTS20: 2 pedestrian, 10 ignore region).
        rles: N COCO compressed RLEs, ``{"size": [height, width], "counts": bytes}``.
    """

    frames: np.ndarray
    ids: np.ndarray
    classes: np.ndarray
    rles: list[dict]


def read_mot_txt(path: str | os.PathLike) -> MotRows:
    """Reads a MOTChallenge txt file (6 to 10 comma-separated columns a line).

    Raises:
        ValueError: naming the file and line, for a wrong column count, a non-numeric or
            non-finite value, a frame below 1 or not an integer, a non-integer id, a negative
            width or height, or an id repeated within a frame.
    """
    path = Path(path)
    rows: list[list[float]] = []
    seen: set[tuple[int, int]] = set()
    for number, line in _lines(path):
        fields = [f.strip() for f in line.split(",")]
        if not 6 <= len(fields) <= 10:
            _fail(path, number, f"expected 6 to 10 comma-separated columns, got {len(fields)}")
        values = _numbers(path, number, fields)
        frame, track, _, _, width, height = values[:6]
        if not (frame.is_integer() and frame >= 1):
            _fail(path, number, f"frame {frame:g} is not an integer >= 1")
        if not track.is_integer():
            _fail(path, number, f"id {track:g} is not an integer")
        if width < 0 or height < 0:
            _fail(path, number, f"box width {width:g} or height {height:g} is negative")
        if (int(frame), int(track)) in seen:
            _fail(path, number, f"id {track:g} appears twice in frame {frame:g}")
        seen.add((int(frame), int(track)))
        score = values[6] if len(values) > 6 else 1.0
        label = values[7] if len(values) > 7 else -1.0
        rows.append([frame, track, *values[2:6], score, label])
    table = np.asarray(rows, dtype=np.float64).reshape(-1, 8)  # (N, 8)
    return MotRows(
        frames=table[:, 0].astype(np.int64),
        ids=table[:, 1].astype(np.int64),
        boxes=table[:, 2:6],
        scores=table[:, 6],
        classes=table[:, 7],
    )


def read_mots_txt(path: str | os.PathLike) -> MotsRows:
    """Reads a MOTS / KITTI-MOTS txt file: ``frame id class_id height width rle`` a line.

    Raises:
        ValueError: naming the file and line, for a wrong field count, a non-integer field, a
            negative frame, a non-positive mask size, or an id repeated within a frame.
    """
    path = Path(path)
    frames, ids, classes, rles = [], [], [], []
    seen: set[tuple[int, int]] = set()
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 6:
            _fail(path, number, f"expected 6 space-separated fields, got {len(fields)}")
        try:
            frame, track, label, height, width = (int(f) for f in fields[:5])
        except ValueError:
            _fail(path, number, f"non-integer field in {line.strip()!r}")
        if frame < 0 or height <= 0 or width <= 0:
            _fail(path, number, f"frame {frame} < 0 or mask size {height}x{width} not positive")
        if (frame, track) in seen:
            _fail(path, number, f"id {track} appears twice in frame {frame}")
        seen.add((frame, track))
        frames.append(frame)
        ids.append(track)
        classes.append(label)
        rles.append({"size": [height, width], "counts": fields[5].encode("utf-8")})
    return MotsRows(
        frames=np.asarray(frames, dtype=np.int64),
        ids=np.asarray(ids, dtype=np.int64),
        classes=np.asarray(classes, dtype=np.int64),
        rles=rles,
    )


def write_mot_txt(
    path: str | os.PathLike, frames: Sequence[Instances], first_frame: int = 1
) -> None:
    """Writes tracker output in the MOTChallenge format, ``frame,id,x,y,w,h,score,-1,-1,-1``.

    The file is written to a temporary file beside ``path`` and moved into place, so a reader
    never sees half a file and a bad input leaves no file.

    Args:
        path: the result file (``<seq>.txt``).
        frames: per frame, instances with ``boxes`` (N, 4) xyxy and ``track_ids`` (N,);
            ``scores`` (N,) are written when present, else 1.
        first_frame: number of ``frames[0]`` (MOTChallenge counts from 1).

    Raises:
        ValueError: a frame without boxes or track ids, a non-finite value, or a track id
            repeated within a frame (naming the frame); nothing is written then.
    """
    lines = []
    for index, instances in enumerate(frames):
        frame = first_frame + index
        if len(instances) == 0:
            continue
        if instances.boxes is None or instances.track_ids is None:
            raise ValueError(f"frame {frame}: instances need boxes and track_ids to be written")
        boxes = instances.boxes.detach().double().cpu().numpy()  # (N, 4) xyxy
        ids = instances.track_ids.detach().cpu().tolist()
        scores = (
            instances.scores.detach().double().cpu().numpy()
            if instances.scores is not None
            else np.ones(len(ids))
        )
        if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
            raise ValueError(f"frame {frame}: non-finite box or score")
        if len(set(ids)) != len(ids):
            raise ValueError(f"frame {frame}: a track id appears twice")
        xywh = np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), axis=1)  # (N, 4)
        for track, box, score in zip(ids, xywh, scores, strict=True):
            # 9 significant digits give float32 values back exactly.
            numbers = ",".join(format(float(v), ".9g") for v in (*box, score))
            lines.append(f"{frame},{int(track)},{numbers},-1,-1,-1\n")
    write_text_atomic(Path(path), "".join(lines))


def write_mots_txt(
    path: str | os.PathLike,
    frames: Sequence[Instances],
    class_id: int = MOTS_PEDESTRIAN,
    first_frame: int = 1,
) -> None:
    """Writes tracker output in the MOTS txt format, ``frame id class_id height width rle``.

    MOTS requires the masks of a frame not to overlap: where they do, the higher-scoring
    object keeps the pixels (objects without any pixel left are not written). Written
    atomically, like :func:`write_mot_txt`.

    Args:
        frames: per frame, instances with dense ``masks`` (N, H, W) bool (or RLE) and
            ``track_ids``; ``scores`` order the overlaps when present.
        class_id: the class written for every object (2: pedestrian in MOTSChallenge).
        first_frame: number of ``frames[0]`` (MOTSChallenge counts from 1, KITTI-MOTS from 0).

    Raises:
        ValueError: a frame without masks or track ids, or a repeated track id (naming the
            frame); nothing is written then.
    """
    from unipercept.structures.masks import RLEMasks, rle_encode

    lines = []
    for index, instances in enumerate(frames):
        frame = first_frame + index
        if len(instances) == 0:
            continue
        if instances.masks is None or instances.track_ids is None:
            raise ValueError(f"frame {frame}: instances need masks and track_ids to be written")
        masks = instances.masks
        masks = (masks.decode() if isinstance(masks, RLEMasks) else masks).cpu().numpy()
        ids = instances.track_ids.cpu().tolist()
        if len(set(ids)) != len(ids):
            raise ValueError(f"frame {frame}: a track id appears twice")
        scores = (
            instances.scores.cpu().numpy() if instances.scores is not None else np.ones(len(ids))
        )
        owner = np.full(masks.shape[1:], -1, dtype=np.int64)  # (H, W)
        for k in np.argsort(scores, kind="stable"):  # the best-scoring object is painted last
            owner[masks[k]] = k
        height, width = owner.shape
        for k, track in enumerate(ids):
            exclusive = owner == k
            if not exclusive.any():
                continue
            counts = rle_encode(exclusive[None])[0]["counts"]
            lines.append(f"{frame} {int(track)} {class_id} {height} {width} {counts}\n")
    write_text_atomic(Path(path), "".join(lines))


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from error
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _numbers(path: Path, number: int, fields: list[str]) -> list[float]:
    try:
        values = [float(f) for f in fields]
    except ValueError:
        _fail(path, number, f"non-numeric value in {','.join(fields)!r}")
    if not all(math.isfinite(v) for v in values):
        _fail(path, number, f"non-finite value in {','.join(fields)!r}")
    return values


def _fail(path: Path, number: int, why: str) -> NoReturn:
    raise ValueError(f"{path}:{number}: {why}")
