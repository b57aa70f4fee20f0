"""Multi-object tracking metrics (MOTChallenge and MOTS protocols): HOTA, CLEAR (MOTA, MOTP,
sMOTSA) and Identity (IDF1) computed by TrackEval's metric classes on data read here.

TrackEval's dataset classes want its folder layout (``seqinfo.ini``, ``seqmaps``, tracker
folders); this module reads the txt files itself, rebuilds the per-sequence arrays TrackEval's
metrics consume (with TrackEval's preprocessing, see :func:`evaluate_mot`) and calls the
metrics directly, so the numbers are the official devkit's.

The txt formats are read and written by :mod:`unipercept.evaluation.mot_files` (its names are
re-exported here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from unipercept.evaluation.mot_files import (
    MOTS_PEDESTRIAN,
    MotRows,
    MotsRows,
    read_mot_txt,
    read_mots_txt,
    write_mot_txt,
    write_mots_txt,
)

PEDESTRIAN = 1  # MOTChallenge class evaluated
MOT_DISTRACTORS = (2, 7, 8, 12)  # person on vehicle, static person, distractor, reflection
MOTS_IGNORE = 10  # MOTS ignore regions
_EPS = np.finfo(float).eps


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


__all__ = [
    "MOTS_IGNORE",
    "MOTS_PEDESTRIAN",
    "MOT_DISTRACTORS",
    "PEDESTRIAN",
    "MotResult",
    "MotRows",
    "MotsRows",
    "evaluate_mot",
    "evaluate_mots",
    "read_mot_txt",
    "read_mots_txt",
    "write_mot_txt",
    "write_mots_txt",
]
