"""Single-object tracking: LaSOT one-pass evaluation (OPE), as pytracking's
``analysis/extract_results.py`` computes it for ``dataset == "lasot"`` (the numbers LaSOT papers
report).

Per sequence of T frames, with boxes ``(x, y, w, h)`` in pixels:

- Frame 0 is the initialisation frame: its prediction is replaced by the ground truth.
- A predicted box of zero width or height is replaced by the previous frame's prediction.
- A frame is *valid* when its ground truth has ``w > 0`` and ``h > 0`` (not NaN) and the target
  is visible (LaSOT: neither ``full_occlusion`` nor ``out_of_view``). Invalid frames never count
  as successes. With ``count_absent_frames=True`` (LaSOT) they stay in the sequence's
  denominator T, as pytracking and the LaSOT toolkit do; with ``False`` the denominator is the
  number of valid frames (pytracking's rule for OTB, NfS, ...).
- Success curve: fraction of frames with IoU **strictly greater** than each threshold in
  ``np.linspace(0, 1, 21)``; the success AUC is the mean of that curve. Because of the strict
  comparison the curve is 0 at threshold 1, so a perfect tracker scores 20/21 ≈ 0.952.
- Precision curve: fraction of frames whose centre distance is ``<=`` each of 0, 1, ..., 50 px;
  the score is the value at 20 px.
- Normalised precision: both centres are divided by the ground-truth ``(w, h)`` (per axis)
  before taking the Euclidean distance; curve over ``np.linspace(0, 0.5, 51)``, score at 0.2.

Dataset-level curves are the means of the per-sequence curves; scores are read off them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unipercept.data.io import write_text_atomic

SUCCESS_THRESHOLDS = np.linspace(0.0, 1.0, 21)
PRECISION_THRESHOLDS = np.arange(0.0, 51.0)
NORMALIZED_PRECISION_THRESHOLDS = np.linspace(0.0, 0.5, 51)

_SEPARATORS = re.compile(r"[,\t ]+")


@dataclass(frozen=True, eq=False)
class SotSequence:
    """Ground truth of one sequence.

    Attributes:
        boxes: (T, 4) float64 xywh boxes; NaN or zero-size rows mark absent targets.
        visible: (T,) bool, False where LaSOT flags full occlusion or out-of-view; None: all
            frames visible.
        source: where the boxes came from, used in error messages.
    """

    boxes: np.ndarray
    visible: np.ndarray | None = None
    source: str = "<ground truth>"


@dataclass(frozen=True, eq=False)
class SotSequenceResult:
    """Attributes:
    success_curve: (21,) success rate at each of ``SUCCESS_THRESHOLDS``.
    precision_curve: (51,) precision at each of ``PRECISION_THRESHOLDS`` (pixels).
    normalized_precision_curve: (51,) at each of ``NORMALIZED_PRECISION_THRESHOLDS``.
    success_auc: mean of ``success_curve``.
    precision_20: ``precision_curve`` at 20 px.
    normalized_precision: ``normalized_precision_curve`` at 0.2.
    num_frames: T.
    num_valid_frames: frames with a present, visible target.
    """

    success_curve: np.ndarray
    precision_curve: np.ndarray
    normalized_precision_curve: np.ndarray
    success_auc: float
    precision_20: float
    normalized_precision: float
    num_frames: int
    num_valid_frames: int


@dataclass(frozen=True, eq=False)
class SotResult:
    """Dataset-level OPE scores (fractions in [0, 1], not percentages).

    Attributes:
        success_auc: AUC of the mean success curve.
        precision_20: mean precision curve at 20 px.
        normalized_precision: mean normalised precision curve at 0.2.
        success_curve, precision_curve, normalized_precision_curve: the mean curves.
        per_sequence: each sequence's :class:`SotSequenceResult`, by name.
    """

    success_auc: float
    precision_20: float
    normalized_precision: float
    success_curve: np.ndarray
    precision_curve: np.ndarray
    normalized_precision_curve: np.ndarray
    per_sequence: Mapping[str, SotSequenceResult]


def read_boxes_txt(path: str | os.PathLike) -> np.ndarray:
    """Reads a LaSOT-style box file: one ``x,y,w,h`` line per frame (tabs or spaces also
    accepted; trailing blank lines ignored).

    Returns:
        (T, 4) float64 array; "nan" entries are kept as NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    lines = path.read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    boxes = np.zeros((len(lines), 4), dtype=np.float64)
    for index, line in enumerate(lines):
        fields = _SEPARATORS.split(line.strip())
        if len(fields) != 4:
            raise ValueError(f"{path}:{index + 1}: expected 4 numbers x,y,w,h, got {line!r}")
        try:
            boxes[index] = [float(f) for f in fields]
        except ValueError:
            raise ValueError(f"{path}:{index + 1}: not a number in {line!r}") from None
    return boxes


def write_boxes_txt(path: str | os.PathLike, boxes: np.ndarray) -> None:
    """Writes (T, 4) xywh boxes as ``x,y,w,h`` lines, atomically (temp file + ``os.replace``)."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (T, 4), got {tuple(boxes.shape)}")
    path = Path(path)
    text = "".join(",".join(f"{v:.17g}" for v in row) + "\n" for row in boxes)
    write_text_atomic(path, text)


def _read_flags(path: Path, length: int) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    fields = [f for f in _SEPARATORS.split(path.read_text().strip()) if f]
    if len(fields) != length:
        raise ValueError(f"{path}:1: {len(fields)} flags for {length} ground-truth frames")
    if any(f not in ("0", "1") for f in fields):
        raise ValueError(f"{path}:1: flags must be 0 or 1")
    return np.array([f == "1" for f in fields])


def load_lasot_sequence(sequence_dir: str | os.PathLike) -> SotSequence:
    """Loads ``groundtruth.txt`` and, where present, ``full_occlusion.txt`` and
    ``out_of_view.txt`` (one comma-separated line of 0/1 flags) from a LaSOT sequence folder."""
    sequence_dir = Path(sequence_dir)
    gt_path = sequence_dir / "groundtruth.txt"
    boxes = read_boxes_txt(gt_path)
    visible = np.ones(len(boxes), dtype=bool)
    for name in ("full_occlusion.txt", "out_of_view.txt"):
        if (sequence_dir / name).exists():
            visible &= ~_read_flags(sequence_dir / name, len(boxes))
    return SotSequence(boxes=boxes, visible=visible, source=str(gt_path))


def box_iou_xywh(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(T,) the IoU of (T, 4) xywh boxes with (T, 4) others, row by row (0 where both are
    empty)."""
    top_left = np.maximum(pred[:, :2], true[:, :2])
    bottom_right = np.minimum(pred[:, :2] + pred[:, 2:], true[:, :2] + true[:, 2:])
    inter = np.clip(bottom_right - top_left, 0.0, None).prod(axis=1)  # (T,)
    union = pred[:, 2:].prod(axis=1) + true[:, 2:].prod(axis=1) - inter  # (T,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _centers(boxes: np.ndarray) -> np.ndarray:
    # pytracking's pixel-index centre x + (w - 1) / 2; the -1 cancels in every difference.
    return boxes[:, :2] + 0.5 * (boxes[:, 2:] - 1.0)


def valid_frames(truth: SotSequence) -> np.ndarray:
    """(T,) bool: the frames whose target is present, of positive size and visible (the
    frames a tracker can succeed on; see the module docstring).

    Raises:
        ValueError: visibility flags that are not one per frame.
    """
    gt = np.asarray(truth.boxes, dtype=np.float64)
    visible = np.ones(len(gt), dtype=bool) if truth.visible is None else truth.visible
    visible = np.asarray(visible, dtype=bool)
    if visible.shape != (len(gt),):
        raise ValueError(f"{truth.source}: {visible.shape} visibility flags for {len(gt)} frames")
    gt_present = ~np.isnan(gt).any(axis=1)
    return gt_present & (np.nan_to_num(gt[:, 2:]) > 0).all(axis=1) & visible


def evaluate_sot_sequence(
    truth: SotSequence,
    predicted: np.ndarray,
    *,
    source: str = "<predictions>",
    count_absent_frames: bool = True,
) -> SotSequenceResult:
    """OPE curves and scores of one sequence (see the module docstring for the protocol).

    Args:
        truth: the sequence's ground truth, T frames.
        predicted: (T, 4) xywh boxes, one per frame; no NaN, no negative sizes.
        source: names the predictions in error messages (a file path when read from one).
        count_absent_frames: keep frames without a valid visible target in the denominator.
    """
    gt = np.asarray(truth.boxes, dtype=np.float64)
    pred = np.array(predicted, dtype=np.float64)  # a copy: frames get replaced below
    if pred.ndim != 2 or pred.shape[1] != 4:
        raise ValueError(f"{source}: predictions must have shape (T, 4), got {pred.shape}")
    if len(pred) != len(gt):
        line = min(len(pred), len(gt)) + 1
        raise ValueError(
            f"{source}:{line}: {len(pred)} predicted boxes for {len(gt)} ground-truth frames "
            f"({truth.source})"
        )
    if len(gt) == 0:
        raise ValueError(f"{truth.source}: sequence has no frames")
    bad = ~np.isfinite(pred).all(axis=1) | (pred[:, 2:] < 0).any(axis=1)
    if bad.any():
        line = int(np.flatnonzero(bad)[0]) + 1
        raise ValueError(f"{source}:{line}: predicted box {pred[line - 1].tolist()} is invalid")
    gt_present = ~np.isnan(gt).any(axis=1)
    for frame in range(1, len(pred)):
        if (pred[frame, 2:] == 0).any() and gt_present[frame]:
            pred[frame] = pred[frame - 1]
    pred[0] = gt[0]

    valid = valid_frames(truth)
    safe_gt = np.where(valid[:, None], gt, 1.0)  # keeps invalid rows from producing NaN

    overlap = np.where(valid, box_iou_xywh(pred, safe_gt), -1.0)  # (T,)
    offset = _centers(pred) - _centers(safe_gt)  # (T, 2)
    center_error = np.where(valid, np.linalg.norm(offset, axis=1), np.inf)  # (T,)
    normalized_error = np.where(valid, np.linalg.norm(offset / safe_gt[:, 2:], axis=1), np.inf)

    denominator = len(gt) if count_absent_frames else int(valid.sum())
    if denominator == 0:
        raise ValueError(f"{truth.source}: no frame with a visible ground-truth target")
    success = (overlap[:, None] > SUCCESS_THRESHOLDS[None]).sum(0) / denominator
    precision = (center_error[:, None] <= PRECISION_THRESHOLDS[None]).sum(0) / denominator
    normalized = (normalized_error[:, None] <= NORMALIZED_PRECISION_THRESHOLDS[None]).sum(
        0
    ) / denominator
    return SotSequenceResult(
        success_curve=success,
        precision_curve=precision,
        normalized_precision_curve=normalized,
        success_auc=float(success.mean()),
        precision_20=float(precision[20]),
        normalized_precision=float(normalized[20]),
        num_frames=len(gt),
        num_valid_frames=int(valid.sum()),
    )


def evaluate_sot(
    gt: Mapping[str, SotSequence | str | os.PathLike],
    predictions: Mapping[str, np.ndarray | str | os.PathLike],
    *,
    count_absent_frames: bool = True,
) -> SotResult:
    """LaSOT OPE over a set of sequences.

    Args:
        gt: per sequence name, its :class:`SotSequence` or a LaSOT sequence folder.
        predictions: per sequence name, (T, 4) xywh boxes or the path of a result txt file.
            Every ground-truth sequence needs predictions, and every prediction a sequence.
        count_absent_frames: see :func:`evaluate_sot_sequence`.

    Returns:
        :class:`SotResult`; dataset scores are read off the mean of the per-sequence curves.
    """
    unknown = sorted(set(predictions) - set(gt))
    if unknown:
        raise ValueError(f"predictions for unknown sequences: {unknown}")
    missing = sorted(set(gt) - set(predictions))
    if missing:
        raise ValueError(f"no predictions for sequences: {missing}")
    if not gt:
        raise ValueError("no sequences to evaluate")
    per_sequence = {}
    for name in sorted(gt):
        truth = gt[name]
        if not isinstance(truth, SotSequence):
            truth = load_lasot_sequence(truth)
        predicted = predictions[name]
        source = f"<predictions for {name}>"
        if isinstance(predicted, str | os.PathLike):
            source = str(predicted)
            predicted = read_boxes_txt(predicted)
        per_sequence[name] = evaluate_sot_sequence(
            truth, predicted, source=source, count_absent_frames=count_absent_frames
        )
    results = list(per_sequence.values())
    success = np.mean([r.success_curve for r in results], axis=0)  # (21,)
    precision = np.mean([r.precision_curve for r in results], axis=0)  # (51,)
    normalized = np.mean([r.normalized_precision_curve for r in results], axis=0)  # (51,)
    return SotResult(
        success_auc=float(success.mean()),
        precision_20=float(precision[20]),
        normalized_precision=float(normalized[20]),
        success_curve=success,
        precision_curve=precision,
        normalized_precision_curve=normalized,
        per_sequence=per_sequence,
    )
