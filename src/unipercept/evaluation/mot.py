"""Multi-object tracking metrics (MOTChallenge and MOTS protocols): HOTA, CLEAR (MOTA, MOTP,
sMOTSA) and Identity (IDF1) computed by TrackEval's metric classes on data read here.

TrackEval's dataset classes want its folder layout (``seqinfo.ini``, ``seqmaps``, tracker
folders); this module reads the txt files itself, rebuilds the per-sequence arrays TrackEval's
metrics consume (with TrackEval's preprocessing, see :func:`evaluate_mot`) and calls the
metrics directly, so the numbers are the official devkit's.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
from scipy.optimize import linear_sum_assignment

from unipercept.data.io import write_text_atomic
from unipercept.structures import Instances

PEDESTRIAN = 1  # MOTChallenge class evaluated
MOT_DISTRACTORS = (2, 7, 8, 12)  # person on vehicle, static person, distractor, reflection
MOTS_PEDESTRIAN = 2  # MOTS20 / KITTI-MOTS class 2 (KITTI-MOTS cars are class 1)
MOTS_IGNORE = 10  # MOTS ignore regions
_EPS = np.finfo(float).eps


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


@dataclass(frozen=True)
class MotResult:
    """Tracking metrics of one sequence, or of several combined (then ``sequences`` holds each
    one's). Rates are fractions in [0, 1] (the devkit prints them times 100).

    Attributes:
        hota, deta, assa, loca: HOTA and its detection / association accuracy and
            localisation accuracy, each averaged over the 19 IoU thresholds 0.05..0.95.
        mota, motp, smota: CLEAR MOTA, MOTP, and sMOTA (sMOTSA for masks) at IoU 0.5.
        idf1, idp, idr: Identity F1, precision and recall at IoU 0.5.
        true_positives, false_positives, false_negatives, id_switches: CLEAR counts.
        num_gt_dets, num_tracker_dets: evaluated boxes or masks after preprocessing.
        sequences: per-sequence results by name (empty for a single sequence's result).
    """

    hota: float
    deta: float
    assa: float
    loca: float
    mota: float
    motp: float
    smota: float
    idf1: float
    idp: float
    idr: float
    true_positives: int
    false_positives: int
    false_negatives: int
    id_switches: int
    num_gt_dets: int
    num_tracker_dets: int
    sequences: Mapping[str, MotResult] = field(default_factory=dict)


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


def evaluate_mot(
    gt: str | os.PathLike | Mapping[str, str | os.PathLike],
    results: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    preprocess: bool = True,
    distractor_classes: Sequence[int] = MOT_DISTRACTORS,
) -> MotResult:
    """MOTChallenge box tracking metrics, as TrackEval's ``MotChallenge2DBox`` gives them.

    Ground-truth rows with ``conf`` 0 are never evaluated. With ``preprocess`` (MOT16/17/20),
    results matched (Hungarian, IoU >= 0.5) to a distractor-class gt box are removed and only
    pedestrian (class 1) gt boxes are evaluated. MOT15 gt has no classes: evaluate it with
    ``preprocess=False``, as TrackEval does for its MOT15 benchmark. Similarity is box IoU.

    Args:
        gt: a folder of sequence folders (``<seq>/gt/gt.txt`` or ``<seq>/gt.txt``) and/or
            ``<seq>.txt`` files, or a mapping sequence name -> gt file.
        results: a folder of ``<seq>.txt`` tracker files, or a mapping name -> file. Every gt
            sequence needs one.
        preprocess: apply the distractor / class preprocessing above (False for MOT15).
        distractor_classes: gt classes whose matched results are removed (MOT20 adds 6).

    Raises:
        ValueError: naming the path, for a missing gt folder or file, a result for a sequence
            the gt lacks, a gt sequence without result, a malformed line, or (with
            ``preprocess``) a gt class that is not a MOTChallenge class 1..13.
    """
    gt_files, result_files = _pair(gt, results)
    per_sequence = {}
    for name, gt_path in gt_files.items():
        truth, tracks = read_mot_txt(gt_path), read_mot_txt(result_files[name])
        invalid = np.setdiff1d(truth.classes, np.arange(1, 14))
        if preprocess and len(invalid):
            raise ValueError(
                f"{gt_path}: gt classes {invalid[:5].tolist()} are not MOTChallenge classes "
                "1..13 (MOT15 ground truth has none: pass preprocess=False)"
            )
        per_sequence[name] = _box_sequence(truth, tracks, preprocess, tuple(distractor_classes))
    return _combine(per_sequence)


def evaluate_mots(
    gt: str | os.PathLike | Mapping[str, str | os.PathLike],
    results: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    class_id: int = MOTS_PEDESTRIAN,
    ignore_class_id: int = MOTS_IGNORE,
) -> MotResult:
    """MOTS metrics (sMOTSA is :attr:`MotResult.smota`), as TrackEval's ``MOTSChallenge`` /
    ``KittiMOTS`` give them for one class: mask IoU similarity; unmatched results (Hungarian,
    IoU >= 0.5) lying more than half inside the frame's ignore region are removed.

    Args:
        gt, results: as for :func:`evaluate_mot`, files in the MOTS txt format.
        class_id: the class evaluated (2 pedestrian; KITTI-MOTS cars are 1).
        ignore_class_id: the class of ignore-region rows (10).

    Raises:
        ValueError: as for :func:`evaluate_mot`, and for masks of different sizes in a frame.
    """
    gt_files, result_files = _pair(gt, results)
    per_sequence = {}
    for name, gt_path in gt_files.items():
        truth, tracks = read_mots_txt(gt_path), read_mots_txt(result_files[name])
        per_sequence[name] = _mask_sequence(truth, tracks, class_id, ignore_class_id, gt_path)
    return _combine(per_sequence)


def _box_sequence(
    truth: MotRows, tracks: MotRows, preprocess: bool, distractors: tuple[int, ...]
) -> dict:
    gt_ids, tracker_ids, similarities = [], [], []
    for t in _timesteps(truth.frames, tracks.frames):
        g, p = truth.frames == t, tracks.frames == t
        similarity = _box_iou(truth.boxes[g], tracks.boxes[p])  # (G, P)
        keep_tracks = np.ones(int(p.sum()), dtype=bool)
        if preprocess:
            rows, cols = _match(similarity)
            keep_tracks[cols[np.isin(truth.classes[g][rows], distractors)]] = False
        keep_gt = truth.scores[g] != 0
        if preprocess:
            keep_gt &= truth.classes[g] == PEDESTRIAN
        gt_ids.append(truth.ids[g][keep_gt])
        tracker_ids.append(tracks.ids[p][keep_tracks])
        similarities.append(similarity[keep_gt][:, keep_tracks])
    return _metric_input(gt_ids, tracker_ids, similarities)


def _mask_sequence(
    truth: MotsRows, tracks: MotsRows, class_id: int, ignore_class_id: int, gt_path: Path
) -> dict:
    from pycocotools import mask as mask_utils

    gt_ids, tracker_ids, similarities = [], [], []
    for t in _timesteps(truth.frames, tracks.frames):
        g = np.flatnonzero((truth.frames == t) & (truth.classes == class_id))
        p = np.flatnonzero((tracks.frames == t) & (tracks.classes == class_id))
        gt_masks, track_masks = [truth.rles[i] for i in g], [tracks.rles[i] for i in p]
        sizes = {tuple(m["size"]) for m in gt_masks + track_masks}
        if len(sizes) > 1:
            raise ValueError(f"{gt_path}: frame {t} has masks of sizes {sorted(sizes)}")
        similarity = np.zeros((len(g), len(p)))
        if len(g) and len(p):
            similarity = np.asarray(mask_utils.iou(gt_masks, track_masks, [False] * len(p)))
        keep_tracks = np.ones(len(p), dtype=bool)
        ignored = np.flatnonzero((truth.frames == t) & (truth.classes == ignore_class_id))
        ignore = [truth.rles[i] for i in ignored]
        if ignore and len(p):
            unmatched = np.setdiff1d(np.arange(len(p)), _match(similarity)[1])
            if len(unmatched):
                region = mask_utils.merge(ignore, intersect=False)
                inside = np.asarray(
                    mask_utils.iou([track_masks[i] for i in unmatched], [region], [True])
                ).reshape(-1)  # intersection over the result's area
                keep_tracks[unmatched[inside > 0.5 + _EPS]] = False
        gt_ids.append(truth.ids[g])
        tracker_ids.append(tracks.ids[p][keep_tracks])
        similarities.append(similarity[:, keep_tracks])
    return _metric_input(gt_ids, tracker_ids, similarities)


def _timesteps(*frame_arrays: np.ndarray) -> range:
    # Metrics only depend on the order of frames: empty frames in between change nothing.
    frames = np.concatenate(frame_arrays)
    return range(int(frames.min()), int(frames.max()) + 1) if len(frames) else range(0)


def _box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """(G, P) IoU of (G, 4) and (P, 4) xywh boxes, as TrackEval computes it (no +1 pixel)."""
    a = np.concatenate((boxes1[:, :2], boxes1[:, :2] + boxes1[:, 2:]), axis=1)[:, None]  # (G,1,4)
    b = np.concatenate((boxes2[:, :2], boxes2[:, :2] + boxes2[:, 2:]), axis=1)[None]  # (1,P,4)
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    intersection = width * height  # (G, P)
    union = boxes1[:, None, 2] * boxes1[:, None, 3] + boxes2[None, :, 2] * boxes2[None, :, 3]
    union = union - intersection
    intersection[union <= _EPS] = 0
    return intersection / np.where(union <= _EPS, 1.0, union)


def _match(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matches with IoU >= 0.5 (TrackEval's preprocessing match)."""
    if similarity.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    scores = np.where(similarity < 0.5 - _EPS, 0.0, similarity)
    rows, cols = linear_sum_assignment(-scores)
    matched = scores[rows, cols] > _EPS
    return rows[matched], cols[matched]


def _metric_input(
    gt_ids: list[np.ndarray], tracker_ids: list[np.ndarray], similarities: list[np.ndarray]
) -> dict:
    """TrackEval's per-sequence metric input, ids relabelled 0..K-1 (its metrics index count
    arrays with them)."""

    def relabel(ids: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
        unique = np.unique(np.concatenate(ids)) if ids else np.zeros(0, dtype=np.int64)
        return [np.searchsorted(unique, i).astype(np.int64) for i in ids], len(unique)

    gt, num_gt_ids = relabel(gt_ids)
    tracker, num_tracker_ids = relabel(tracker_ids)
    return {
        "num_timesteps": len(gt),
        "num_gt_ids": num_gt_ids,
        "num_tracker_ids": num_tracker_ids,
        "num_gt_dets": sum(len(i) for i in gt),
        "num_tracker_dets": sum(len(i) for i in tracker),
        "gt_ids": gt,
        "tracker_ids": tracker,
        "similarity_scores": similarities,
    }


def _combine(per_sequence: Mapping[str, dict]) -> MotResult:
    import trackeval

    metrics = {
        "hota": trackeval.metrics.HOTA({"PRINT_CONFIG": False}),
        "clear": trackeval.metrics.CLEAR({"THRESHOLD": 0.5, "PRINT_CONFIG": False}),
        "identity": trackeval.metrics.Identity({"THRESHOLD": 0.5, "PRINT_CONFIG": False}),
    }
    raw = {
        name: {key: metric.eval_sequence(data) for key, metric in metrics.items()}
        for name, data in per_sequence.items()
    }
    combined = {
        key: metric.combine_sequences({name: res[key] for name, res in raw.items()})
        for key, metric in metrics.items()
    }
    sequences = {name: _result(res, per_sequence[name]) for name, res in raw.items()}
    totals = {
        "num_gt_dets": sum(d["num_gt_dets"] for d in per_sequence.values()),
        "num_tracker_dets": sum(d["num_tracker_dets"] for d in per_sequence.values()),
    }
    return _result(combined, totals, sequences)


def _result(
    res: Mapping[str, dict], counts: Mapping, sequences: Mapping[str, MotResult] | None = None
) -> MotResult:
    hota, clear, identity = res["hota"], res["clear"], res["identity"]
    return MotResult(
        hota=float(np.mean(hota["HOTA"])),
        deta=float(np.mean(hota["DetA"])),
        assa=float(np.mean(hota["AssA"])),
        loca=float(np.mean(hota["LocA"])),
        mota=float(clear["MOTA"]),
        motp=float(clear["MOTP"]),
        smota=float(clear["sMOTA"]),
        idf1=float(identity["IDF1"]),
        idp=float(identity["IDP"]),
        idr=float(identity["IDR"]),
        true_positives=int(clear["CLR_TP"]),
        false_positives=int(clear["CLR_FP"]),
        false_negatives=int(clear["CLR_FN"]),
        id_switches=int(clear["IDSW"]),
        num_gt_dets=int(counts["num_gt_dets"]),
        num_tracker_dets=int(counts["num_tracker_dets"]),
        sequences=dict(sequences or {}),
    )


def _pair(
    gt: str | os.PathLike | Mapping[str, str | os.PathLike],
    results: str | os.PathLike | Mapping[str, str | os.PathLike],
) -> tuple[dict[str, Path], dict[str, Path]]:
    """gt and result files by sequence name, checked to exist and to pair up."""
    gt_files = _files(gt, _gt_folder_files, "ground-truth")
    result_files = _files(results, _result_folder_files, "result")
    if not gt_files:
        raise ValueError(f"no ground-truth sequences found in {gt}")
    for name, path in result_files.items():
        if name not in gt_files:
            raise ValueError(f"{path}: result for sequence {name!r}, which has no ground truth")
    for name, path in gt_files.items():
        if name not in result_files:
            raise ValueError(f"{path}: no result file for sequence {name!r}")
    return gt_files, result_files


def _files(
    source: str | os.PathLike | Mapping[str, str | os.PathLike],
    list_folder: Callable[[Path], dict[str, Path]],
    kind: str,
) -> dict[str, Path]:
    if isinstance(source, Mapping):
        files = {str(name): Path(path) for name, path in source.items()}
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise ValueError(f"{folder}: {kind} folder not found")
        files = list_folder(folder)
    for path in files.values():
        if not path.is_file():
            raise ValueError(f"{path}: {kind} file not found")
    return files


def _gt_folder_files(folder: Path) -> dict[str, Path]:
    files = {p.stem: p for p in sorted(folder.glob("*.txt"))}
    for sequence in sorted(p for p in folder.iterdir() if p.is_dir()):
        for candidate in (sequence / "gt" / "gt.txt", sequence / "gt.txt"):
            if candidate.is_file():
                files[sequence.name] = candidate
                break
    return files


def _result_folder_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob("*.txt"))}


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
