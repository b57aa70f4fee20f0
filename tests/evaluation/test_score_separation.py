"""Score separation: precision, recall, AP and best F1 of the answer's score as a hit detector,
against hand-computed numbers (and scikit-learn's AP where it is installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unipercept.evaluation.score_separation import (
    CURVE_THRESHOLDS,
    average_precision,
    best_f1,
    hits_from_overlap,
    precision_recall,
    score_separation,
)

# Five answers, the fourth on an absent target: ranked by score, hit, miss, hit, miss, miss.
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
HITS = [True, False, True, False, False]
VISIBLE = [True, True, True, False, True]


def test_precision_and_recall_at_a_threshold():
    # 0.65 reports 0.9, 0.8, 0.7: two hits of three answers, of four visible targets.
    assert precision_recall(SCORES, HITS, VISIBLE, 0.65) == pytest.approx((2 / 3, 2 / 4))
    # A threshold equal to a score reports it.
    assert precision_recall(SCORES, HITS, VISIBLE, 0.9) == pytest.approx((1.0, 1 / 4))
    assert precision_recall(SCORES, HITS, VISIBLE, 0.0) == pytest.approx((2 / 5, 2 / 4))
    precision, recall = precision_recall(SCORES, HITS, VISIBLE, 0.95)
    assert math.isnan(precision) and recall == 0.0  # nothing reported: precision undefined


def test_average_precision_by_hand():
    # Recall rises by 1/4 at 0.9 (precision 1) and by 1/4 at 0.7 (precision 2/3).
    assert average_precision(SCORES, HITS, VISIBLE) == pytest.approx(1 / 4 + 1 / 4 * 2 / 3)
    # A perfect ranking of all-hit visible frames is 1; a wrong answer on a visible target
    # lowers the ceiling whatever its score.
    assert average_precision([0.9, 0.1], [True, True], [True, True]) == pytest.approx(1.0)
    assert average_precision([0.9, 0.1], [True, False], [True, True]) == pytest.approx(0.5)
    assert average_precision([0.9, 0.1], [False, False], [True, True]) == 0.0
    assert math.isnan(average_precision([0.9], [False], [False]))


def test_ties_are_one_operating_point():
    # Equal scores are reported together: one point at recall 1, precision 1/2.
    assert average_precision([0.5, 0.5], [True, False], [True, True]) == pytest.approx(0.25)
    assert best_f1([0.5, 0.5], [True, False], [True, True]) == pytest.approx((0.5, 0.5))


def test_average_precision_against_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for _ in range(20):
        count = int(rng.integers(2, 60))
        visible = rng.random(count) < 0.8
        hits = visible & (rng.random(count) < 0.6)
        scores = np.round(rng.random(count), 1)  # with ties
        if not hits.any():
            continue
        expected = metrics.average_precision_score(hits, scores) * hits.sum() / visible.sum()
        assert average_precision(scores, hits, visible) == pytest.approx(expected)


def test_best_f1_is_the_highest_threshold_of_the_best():
    # F1 at 0.9, 0.8, 0.7, 0.6, 0.5: 2/5, 1/3, 4/7, 1/2, 4/9.
    assert best_f1(SCORES, HITS, VISIBLE) == pytest.approx((4 / 7, 0.7))
    # F1 2/3 at 0.9 (one hit of two) and at 0.3 (two hits of four answers): the higher.
    scores, hits = [0.9, 0.6, 0.5, 0.3], [True, False, False, True]
    assert best_f1(scores, hits, hits) == pytest.approx((2 / 3, 0.9))
    f1, threshold = best_f1([0.9], [False], [True])
    assert f1 == 0.0 and math.isnan(threshold)  # no answer is a hit


def test_score_separation_gathers_them():
    result = score_separation(SCORES, HITS, VISIBLE, threshold=0.65)
    assert (result.frames, result.visible_frames, result.hits) == (5, 4, 2)
    assert (result.reported, result.reported_hits) == (3, 2)
    assert result.absent_fraction == pytest.approx(1 / 5)
    assert (result.precision, result.recall) == pytest.approx((2 / 3, 1 / 2))
    assert result.f1 == pytest.approx(4 / 7)
    assert result.average_precision == pytest.approx(5 / 12)
    # A constant score: one point at recall 2/4, precision 2/5.
    assert result.constant_score_average_precision == pytest.approx(2 / 5 * 2 / 4)
    assert (result.best_f1, result.best_f1_threshold) == pytest.approx((4 / 7, 0.7))
    assert result.curve_thresholds == CURVE_THRESHOLDS and len(CURVE_THRESHOLDS) == 21
    at = dict(zip(result.curve_thresholds, result.curve_recall, strict=True))
    assert (at[0.0], at[0.75], at[0.95]) == pytest.approx((1 / 2, 1 / 4, 0.0))
    precision = dict(zip(result.curve_thresholds, result.curve_precision, strict=True))
    assert precision[0.7] == pytest.approx(2 / 3) and math.isnan(precision[1.0])


def test_no_answer_is_never_reported():
    # -inf: the session gave no answer for the target; it counts against recall only.
    result = score_separation([-math.inf, 0.3], [False, True], [True, True], threshold=0.0)
    assert (result.reported, result.precision, result.recall) == (1, 1.0, 0.5)
    assert result.average_precision == pytest.approx(0.5)


def test_no_frames_gives_nan_not_an_error():
    result = score_separation([], [], [], threshold=0.2)
    assert result.frames == 0 and math.isnan(result.precision) and math.isnan(result.recall)
    assert math.isnan(result.average_precision) and math.isnan(result.best_f1)


def test_hits_need_a_visible_target_and_half_overlap():
    hits = hits_from_overlap([0.5, 0.49, 0.9, 1.0], [True, True, True, False])
    assert hits.tolist() == [True, False, True, False]


@pytest.mark.parametrize(
    ("scores", "hits", "visible", "message"),
    [
        ([0.1, 0.2], [True], [True, True], "one length"),
        ([0.1, math.nan], [True, False], [True, True], "NaN at answer 1"),
        ([0.1, 0.2], [False, True], [True, False], "answer 1 is a hit on an absent target"),
    ],
)
def test_bad_arrays_are_refused(scores, hits, visible, message):
    with pytest.raises(ValueError, match=message):
        score_separation(scores, hits, visible, threshold=0.2)
