"""How well an answer's score separates hits from misses: the measure of a ``score_threshold``
that should report "not found" (an empty frame) when the target is gone.

The annotation tasks (sot, vos) answer every frame after the first, for every target, with the
best candidate and its score; the task reports the answer when the score is at least its
``score_threshold``, and an empty frame otherwise. Each (frame, target) gives three numbers:

- ``score``: the answer's score, whether or not it passes the threshold (``-inf`` where there
  was no answer at all, which no threshold reports).
- ``visible``: the target is in the ground-truth frame, so a hit was possible.
- ``hit``: the target is visible and the answer overlaps it with IoU >= :data:`HIT_IOU` (box IoU
  for SOT, mask IoU for VOS). Every other answer is a miss: a wrong place, or a target that is
  absent from the ground-truth frame.

At a threshold ``t`` the answers with ``score >= t`` are reported, and

- precision = hits reported / answers reported (NaN when nothing is reported),
- recall = hits reported / visible frames (NaN when no target is visible); its ceiling, at
  threshold 0, is the fraction of visible frames the answers hit,
- F1 = 2 precision recall / (precision + recall) (0 when nothing is reported or nothing
  reported is a hit).

The average precision treats the score as a hit detector: the area under that precision-recall
curve as scikit-learn's ``average_precision_score`` computes it (the step sum over the distinct
scores, from the highest, of the recall gained times the precision there), but with recall
counted against the visible frames, so it is scikit-learn's value times hits / visible frames:
answers that are wrong at every threshold cost AP as well as recall. A score that says nothing
(the same for every answer) gets ``hits / frames * hits / visible frames``: that, not 0.5, is
the AP to beat.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The IoU from which an answer is a hit: the usual "found it" overlap (VOT, DAVIS J recall).
HIT_IOU = 0.5
# The thresholds of the reported precision-recall curve.
CURVE_THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.0, 1.0, 21), 2))


@dataclass(frozen=True)
class ScoreSeparation:
    """How well the scores of a set of answers separate hits from misses (fractions in [0, 1];
    see the module docstring for the definitions).

    Attributes:
        threshold: the score threshold the precision, recall and F1 are taken at.
        frames: the answers scored, one per (frame after the first, target).
        visible_frames: those where the target is visible in the ground truth.
        absent_fraction: the fraction of ``frames`` where the target is absent (the answers a
            perfect threshold leaves out, however right their place).
        hits: the answers that are hits, at any threshold.
        reported: the answers at or above ``threshold``.
        reported_hits: the hits among them.
        precision, recall, f1: at ``threshold``.
        average_precision: of the score as a hit detector, over all thresholds.
        constant_score_average_precision: what a score that is the same for every answer
            gets (``hits / frames * hits / visible_frames``): the AP to beat.
        best_f1: the highest F1 any threshold gives.
        best_f1_threshold: the highest threshold that gives it (one of the scores); NaN when no
            answer is a hit.
        curve_thresholds: the thresholds of the curve (:data:`CURVE_THRESHOLDS`).
        curve_precision, curve_recall: precision and recall at each of them.
    """

    threshold: float
    frames: int
    visible_frames: int
    absent_fraction: float
    hits: int
    reported: int
    reported_hits: int
    precision: float
    recall: float
    f1: float
    average_precision: float
    constant_score_average_precision: float
    best_f1: float
    best_f1_threshold: float
    curve_thresholds: tuple[float, ...]
    curve_precision: tuple[float, ...]
    curve_recall: tuple[float, ...]


def _checked(
    scores: Sequence[float] | np.ndarray,
    hits: Sequence[bool] | np.ndarray,
    visible: Sequence[bool] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three (N,) arrays as float64, bool, bool.

    Raises:
        ValueError: arrays of different lengths or not 1-D, a NaN score, or a hit where the
            target is not visible.
    """
    scores = np.asarray(scores, dtype=np.float64)
    hits = np.asarray(hits, dtype=bool)
    visible = np.asarray(visible, dtype=bool)
    if scores.ndim != 1 or hits.shape != scores.shape or visible.shape != scores.shape:
        raise ValueError(
            f"scores, hits and visible must be (N,) arrays of one length, got "
            f"{scores.shape}, {hits.shape}, {visible.shape}"
        )
    if np.isnan(scores).any():
        raise ValueError(f"scores hold NaN at answer {int(np.flatnonzero(np.isnan(scores))[0])}")
    if (hits & ~visible).any():
        raise ValueError(
            f"answer {int(np.flatnonzero(hits & ~visible)[0])} is a hit on an absent target"
        )
    return scores, hits, visible


def hits_from_overlap(
    overlap: Sequence[float] | np.ndarray,
    visible: Sequence[bool] | np.ndarray,
    min_iou: float = HIT_IOU,
) -> np.ndarray:
    """(N,) bool: the answers whose IoU with a visible target is at least ``min_iou``.

    Args:
        overlap: (N,) each answer's IoU with the ground truth (ignored where not visible).
        visible: (N,) whether the target is in the ground-truth frame.
    """
    overlap = np.asarray(overlap, dtype=np.float64)
    return np.asarray(visible, dtype=bool) & (overlap >= min_iou)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def _f1(precision: float, recall: float) -> float:
    if math.isnan(recall):
        return math.nan
    if math.isnan(precision) or precision + recall == 0:
        return 0.0  # nothing reported, or nothing reported is a hit
    return 2 * precision * recall / (precision + recall)


def precision_recall(
    scores: Sequence[float] | np.ndarray,
    hits: Sequence[bool] | np.ndarray,
    visible: Sequence[bool] | np.ndarray,
    threshold: float,
) -> tuple[float, float]:
    """Precision and recall of the answers reported at ``threshold`` (``score >= threshold``).

    Args:
        scores: (N,) each answer's score.
        hits: (N,) whether the answer is a hit.
        visible: (N,) whether the target is visible (a hit was possible).

    Returns:
        (precision, recall); precision is NaN when nothing is reported, recall NaN when no
        target is visible.
    """
    scores, hits, visible = _checked(scores, hits, visible)
    reported = scores >= threshold
    found = int((reported & hits).sum())
    return _ratio(found, int(reported.sum())), _ratio(found, int(visible.sum()))


def _operating_points(
    scores: np.ndarray, hits: np.ndarray, visible: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At each distinct finite score, from the highest: (threshold, precision, recall) of the
    answers reported there, each (P,)."""
    order = np.argsort(-scores, kind="stable")
    ranked, ranked_hits = scores[order], hits[order]
    finite = np.isfinite(ranked)
    ranked, ranked_hits = ranked[finite], ranked_hits[finite]
    # The last answer of each run of equal scores: a threshold reports all of a run or none.
    last = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], len(ranked) > 0])  # (P,)
    found = np.cumsum(ranked_hits)[last]  # (P,)
    reported = last + 1  # (P,)
    visible_count = int(visible.sum())
    recall = found / visible_count if visible_count else np.full(len(found), math.nan)
    return ranked[last], found / reported, recall


def average_precision(
    scores: Sequence[float] | np.ndarray,
    hits: Sequence[bool] | np.ndarray,
    visible: Sequence[bool] | np.ndarray,
) -> float:
    """The area under the precision-recall curve of the score as a hit detector, with recall
    counted against the visible frames (see the module docstring).

    Args:
        scores, hits, visible: (N,) as for :func:`precision_recall`.

    Returns:
        AP in [0, 1]; NaN when no target is visible, 0 when no answer is a hit.
    """
    scores, hits, visible = _checked(scores, hits, visible)
    if not visible.any():
        return math.nan
    _, precision, recall = _operating_points(scores, hits, visible)
    gained = np.diff(np.r_[0.0, recall])  # (P,)
    return float((gained * precision).sum())


def best_f1(
    scores: Sequence[float] | np.ndarray,
    hits: Sequence[bool] | np.ndarray,
    visible: Sequence[bool] | np.ndarray,
) -> tuple[float, float]:
    """The highest F1 over all thresholds, and the highest threshold that gives it.

    The thresholds tried are the distinct scores: a threshold between two scores reports what
    the higher one does.

    Args:
        scores, hits, visible: (N,) as for :func:`precision_recall`.

    Returns:
        (F1, threshold); (NaN, NaN) when no target is visible, (0, NaN) when no answer is a hit.
    """
    scores, hits, visible = _checked(scores, hits, visible)
    if not visible.any():
        return math.nan, math.nan
    if not hits.any():
        return 0.0, math.nan
    thresholds, precision, recall = _operating_points(scores, hits, visible)
    f1 = [_f1(p, r) for p, r in zip(precision.tolist(), recall.tolist(), strict=True)]
    best = int(np.argmax(f1))  # the first maximum: the highest threshold
    return float(f1[best]), float(thresholds[best])


def score_separation(
    scores: Sequence[float] | np.ndarray,
    hits: Sequence[bool] | np.ndarray,
    visible: Sequence[bool] | np.ndarray,
    threshold: float,
    curve_thresholds: Sequence[float] = CURVE_THRESHOLDS,
) -> ScoreSeparation:
    """All the measures of :class:`ScoreSeparation` for one set of answers.

    Args:
        scores: (N,) each answer's score, ``-inf`` where there was no answer.
        hits: (N,) whether the answer is a hit (a visible target, IoU >= :data:`HIT_IOU`).
        visible: (N,) whether the target is visible in the ground truth.
        threshold: the task's score threshold.
        curve_thresholds: where to sample the precision-recall curve.

    Raises:
        ValueError: see :func:`precision_recall`'s arrays: different lengths, a NaN score, or
            a hit on an absent target.
    """
    scores, hits, visible = _checked(scores, hits, visible)
    precision, recall = precision_recall(scores, hits, visible, threshold)
    curve = [precision_recall(scores, hits, visible, t) for t in curve_thresholds]
    top_f1, top_threshold = best_f1(scores, hits, visible)
    reported = scores >= threshold
    return ScoreSeparation(
        threshold=float(threshold),
        frames=len(scores),
        visible_frames=int(visible.sum()),
        absent_fraction=_ratio(int((~visible).sum()), len(scores)),
        hits=int(hits.sum()),
        reported=int(reported.sum()),
        reported_hits=int((reported & hits).sum()),
        precision=precision,
        recall=recall,
        f1=_f1(precision, recall),
        average_precision=average_precision(scores, hits, visible),
        constant_score_average_precision=average_precision(np.zeros(len(scores)), hits, visible),
        best_f1=top_f1,
        best_f1_threshold=top_threshold,
        curve_thresholds=tuple(float(t) for t in curve_thresholds),
        curve_precision=tuple(p for p, _ in curve),
        curve_recall=tuple(r for _, r in curve),
    )
