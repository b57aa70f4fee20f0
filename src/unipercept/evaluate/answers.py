"""sot and vos ``--images``: every frame's answer kept with its score, to measure how well the
score separates hits from misses (:mod:`unipercept.evaluation.score_separation`).

The session runs at ``score_threshold=0``, so that it gives each target's best candidate and
its score in every frame, also where the task would report the frame empty; the task's own
threshold is applied here, to write the result files. This gives the task's answers exactly:

- :class:`~unipercept.tasks.session.AnnotationSession` (the project's model) picks the best
  candidate whatever the threshold, which only filters what is reported; its template update
  takes an object reported *and* scoring at least ``update_threshold``, so the session here runs
  with ``update_threshold = max(update_threshold, score_threshold)``, which updates on the
  same frames.
- UNINEXT's sessions have ``score_threshold=0`` by default, so they run as they always do.
- The copy-first baseline ignores both options (its scores are 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from unipercept.api import Predictor
    from unipercept.evaluation.score_separation import ScoreSeparation


def answering_options(predictor: Predictor, task: str) -> tuple[float, dict[str, float]]:
    """The score threshold of ``task`` (sot or vos, with its default options, as the CLI runs
    it) on ``predictor``'s model, and the session options that report every target's best
    candidate and otherwise run as that task does (see the module docstring).

    Returns:
        (threshold, options for ``predictor.start``).
    """
    from unipercept.api import resolve_task

    # The copy-first baseline has no model: the project's task gives the threshold.
    resolved = resolve_task(task, model=getattr(predictor, "model", None))
    threshold = float(resolved.score_threshold)
    update = max(float(resolved.update_threshold), threshold)
    return threshold, {"score_threshold": 0.0, "update_threshold": update}


@dataclass
class AnswerLog:
    """The answers of one run, one entry per (frame after the first with ground truth,
    target), filled while the run goes.

    Attributes:
        threshold: the task's score threshold (applied to write the result files).
        scores: each answer's score; ``-inf`` where the session gave none for the target.
        hits: whether the answer is a hit (visible target, IoU >= ``HIT_IOU``).
        visible: whether the target is in the ground-truth frame.
        always_answer: the task's headline metrics scored with every answer reported
            (threshold 0), by the scores json's names; None when those answers could not be
            scored (the result files' scoring then says why).
    """

    threshold: float
    scores: list[float] = field(default_factory=list)
    hits: list[bool] = field(default_factory=list)
    visible: list[bool] = field(default_factory=list)
    always_answer: dict[str, float] | None = None

    def add(self, scores: np.ndarray, overlap: np.ndarray, visible: np.ndarray) -> None:
        """Adds answers.

        Args:
            scores: (N,) their scores, ``-inf`` for no answer.
            overlap: (N,) their IoU with the ground truth (box IoU for SOT, mask IoU for VOS;
                ignored where the target is not visible).
            visible: (N,) bool, whether the target is in the ground-truth frame.
        """
        from unipercept.evaluation.score_separation import hits_from_overlap

        self.scores += np.asarray(scores, dtype=np.float64).tolist()
        self.hits += hits_from_overlap(overlap, visible).tolist()
        self.visible += np.asarray(visible, dtype=bool).tolist()

    def separation(self) -> ScoreSeparation:
        """How well the scores separate hits from misses, at the task's threshold."""
        from unipercept.evaluation.score_separation import score_separation

        return score_separation(self.scores, self.hits, self.visible, self.threshold)

    def report(self, scores: Mapping[str, Any]) -> dict[str, Any]:
        """The scores json's ``score_separation`` entry.

        Args:
            scores: the result files' scores (the task at its threshold), whose headline
                metrics are repeated as ``metric_at_threshold`` beside ``metric_always_answer``.
        """
        separation = dataclasses.asdict(self.separation())
        curve = {
            "threshold": list(separation.pop("curve_thresholds")),
            "precision": list(separation.pop("curve_precision")),
            "recall": list(separation.pop("curve_recall")),
        }
        always = self.always_answer
        names = always if always is not None else ()
        return {
            **separation,
            "metric_at_threshold": {name: scores[name] for name in names},
            "metric_always_answer": always,
            "curve": curve,
        }


def sot_answers(log: AnswerLog, truth: Any, answers: np.ndarray, scores: np.ndarray) -> None:
    """Adds one SOT sequence's answers to ``log``.

    Args:
        truth: the sequence's :class:`~unipercept.evaluation.sot.SotSequence`; a frame's
            target is visible where the LaSOT metric can count a success there
            (:func:`~unipercept.evaluation.sot.valid_frames`).
        answers: (T, 4) xywh, each frame's best candidate (zeros where none).
        scores: (T,) their scores, ``-inf`` where none.
    """
    from unipercept.evaluation.sot import box_iou_xywh, valid_frames

    frames = min(len(answers), len(truth.boxes))  # a length mismatch is the scorer's error
    visible = valid_frames(truth)[1:frames]  # (T - 1,)
    true_boxes = np.where(visible[:, None], truth.boxes[1:frames], 1.0)  # no NaN in the IoU
    overlap = box_iou_xywh(answers[1:frames], true_boxes)  # (T - 1,)
    log.add(scores[1:frames], overlap, visible)


def sot_always_answer(
    truths: Mapping[str, Any], answers: Mapping[str, np.ndarray]
) -> dict[str, float] | None:
    """The LaSOT scores of ``answers`` (per sequence, (T, 4) xywh) reported in every frame;
    None when they cannot be scored."""
    from unipercept.evaluation.sot import evaluate_sot

    try:
        result = evaluate_sot(truths, answers)
    except ValueError:
        return None
    return {
        "success_auc": result.success_auc,
        "precision_20": result.precision_20,
        "normalized_precision": result.normalized_precision,
    }


def vos_answers(
    log: AnswerLog,
    truth: np.ndarray,
    ids: list[int],
    binary: bool,
    answers: Mapping[int, tuple[float, np.ndarray]],
    source: str,
) -> None:
    """Adds one VOS frame's answers, one per object, to ``log``.

    Args:
        truth: (H, W) the frame's ground-truth object indices.
        ids: the objects' indices in the ground truth (object k is track id k + 1).
        binary: a DAVIS 2016 sequence: any non-zero index is the one object.
        answers: per track id, (score, (H, W) bool mask) of the best candidate; an object
            without an entry had no answer.
        source: the ground-truth file, for the error message.

    Raises:
        ValueError: an answer mask whose size differs from the ground truth's.
    """
    from unipercept.evaluation.davis import VOID, region_similarity

    void = None if binary else truth == VOID
    scores, overlaps, visible = [], [], []
    for k, index in enumerate(ids):
        target = truth != 0 if binary else truth == index  # (H, W)
        score, mask = answers.get(k + 1, (-math.inf, np.zeros_like(target)))
        if mask.shape != target.shape:
            raise ValueError(
                f"{source}: size {target.shape} (height, width), the frame's {mask.shape}"
            )
        scores.append(score)
        overlaps.append(region_similarity(mask, target, void))
        visible.append(bool((target if void is None else target & ~void).any()))
    log.add(np.array(scores), np.array(overlaps), np.array(visible))


def vos_always_answer(
    truth: Mapping[str, np.ndarray], answers: Mapping[str, np.ndarray], sequence: str
) -> tuple[Any, ...] | None:
    """One sequence's DAVIS scores (:class:`~unipercept.evaluation.davis.ObjectScores`, per
    object) of label maps that report every answer, by the rules the result files are scored
    with; None when they cannot be scored.

    Args:
        truth: (H, W) ground-truth indices by frame name.
        answers: (H, W) answer label maps by frame name.
        sequence: its name.
    """
    from unipercept.evaluation.davis import evaluate_sequence

    try:
        return evaluate_sequence(truth, answers, sequence=sequence)
    except ValueError:
        return None
