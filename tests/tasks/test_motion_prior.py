"""SOT and VOS's motion prior: among the queries, the answer is chosen by score weighed by how
near its box is to the object's last box (AnnotationSession, ``motion_*`` options).

The tiny model is untrained, so a forward hook sets the last layer's outputs: a far query that
scores higher and a near one that scores a little lower, the rest nowhere.
"""

from __future__ import annotations

import math

import pytest
import torch

from unipercept.api import Predictor
from unipercept.data.preprocess import ImagePreprocessor
from unipercept.evaluate.answers import answering_options
from unipercept.structures import AnnotationPrompt
from unipercept.tasks import SingleObjectTrackingTask, VideoObjectSegmentationTask
from unipercept.tasks.session import proximity
from unipercept.tasks.snapshot import load_session_state, session_state

from ..modeling.tiny import tiny_unipercept

HEIGHT, WIDTH = 64, 96
BOX = [8.0, 20.0, 28.0, 40.0]  # the annotation: centre (18, 30), size 20
FAR = (0.85, 0.5)  # normalised centre of the higher-scoring query, 63 px away
NEAR = (0.25, 0.5)  # the lower-scoring query, 6 px to the right of the annotation


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(tiny_unipercept(), preprocess=ImagePreprocessor(short_size=64, max_size=96))


@pytest.fixture
def two_candidates(predictor):
    """Query 0 far away, query 1 near with a little lower score, the rest 0. With the
    predicted IoU at 1 a query's score is its probability's square root (0.976 and 0.939)."""
    state = {"near": NEAR, "far_logit": 3.0}

    def hook(module, inputs, output):
        logits, boxes = output.logits[-1], output.boxes[-1]
        logits.fill_(-30.0)
        logits[:, 0, :] = state["far_logit"]
        logits[:, 1, :] = 2.0
        output.quality[-1].fill_(30.0)  # predicted IoU 1: the score is the probability
        boxes[...] = torch.tensor([0.5, 0.5, 0.05, 0.05])
        boxes[:, 0] = torch.tensor([*FAR, 0.2, 0.3])
        boxes[:, 1] = torch.tensor([*state["near"], 0.2, 0.3])

    handle = predictor.model.register_forward_hook(hook)
    yield state
    handle.remove()


def frame() -> torch.Tensor:
    return torch.full((3, HEIGHT, WIDTH), 90, dtype=torch.uint8)


def centre_x(result) -> float:
    return float(result.boxes[0, 0] + result.boxes[0, 2]) / 2


def test_proximity_is_one_at_the_last_centre_and_widens_when_missed():
    last = torch.tensor([10.0, 10.0, 30.0, 30.0])  # centre (20, 20), size 20
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 10.0, 60.0, 30.0]])  # 0 and 30 px
    near, far = proximity(boxes, last, missed=0, sigma=1.5).tolist()
    assert near == pytest.approx(1.0)
    assert far == pytest.approx(math.exp(-0.5))  # 30 px is one radius (1.5 * 20)
    wider = proximity(boxes, last, missed=2, sigma=1.5)[1]
    assert float(wider) == pytest.approx(math.exp(-0.5 / 9))  # three times the radius


@pytest.mark.parametrize("task", ["sot", "vos"])
def test_the_prior_prefers_the_near_query_to_a_slightly_better_far_one(
    predictor, two_candidates, task
):
    prompt = AnnotationPrompt(frame(), box=BOX)
    options = {"score_threshold": 0.0, "motion_sigma": 1.5}
    by_score = predictor.start(task, prompt, motion_weight=0.0, **options)
    with_prior = predictor.start(task, prompt, motion_weight=0.5, **options)
    for session in (by_score, with_prior):
        session.step(frame())
    far, near = by_score.step(frame()), with_prior.step(frame())
    assert centre_x(far) == pytest.approx(FAR[0] * WIDTH, abs=0.5)
    assert centre_x(near) == pytest.approx(NEAR[0] * WIDTH, abs=0.5)
    # The reported score is the model's own score of the chosen query, not the weighed one.
    assert float(near.scores[0]) == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item() ** 0.5)


def test_the_last_box_follows_answers_above_the_motion_threshold(predictor, two_candidates):
    prompt = AnnotationPrompt(frame(), box=BOX)
    session = predictor.start(
        "sot", prompt, score_threshold=0.0, motion_weight=0.5, motion_sigma=1.5
    )
    session.step(frame())
    assert session.last_boxes[0].tolist() == BOX
    # The near query drifts right 6 px a frame; the prior follows it beyond where the
    # annotation's prior alone would have let the far query win.
    for step in range(1, 6):
        two_candidates["near"] = (NEAR[0] + 0.0625 * step, NEAR[1])
        result = session.step(frame())
        assert centre_x(result) == pytest.approx(two_candidates["near"][0] * WIDTH, abs=0.5)
        assert session.last_boxes[0].tolist() == pytest.approx(result.boxes[0].tolist())
        assert int(session.frames_missed[0]) == 0


def test_answers_below_the_motion_threshold_leave_the_last_box_and_widen_the_prior(
    predictor, two_candidates
):
    prompt = AnnotationPrompt(frame(), box=BOX)
    session = predictor.start(
        "sot",
        prompt,
        score_threshold=0.0,
        motion_weight=0.5,
        motion_sigma=1.5,
        motion_threshold=1.0,  # no answer scores this: every frame is a miss
    )
    session.step(frame())
    two_candidates["far_logit"] = 8.0  # the far query scores 0.9998 against the near 0.939
    chosen = [centre_x(session.step(frame())) for _ in range(8)]
    assert session.last_boxes[0].tolist() == BOX
    assert int(session.frames_missed[0]) == 8
    # The prior widens with every miss (radius 30, 60, 90, ... px) until the far query's
    # better score wins, from the fifth frame on (radius 150 px).
    near, far = NEAR[0] * WIDTH, FAR[0] * WIDTH
    assert chosen == pytest.approx([near] * 4 + [far] * 4, abs=0.5)


def test_the_prior_state_is_in_a_session_snapshot(predictor, two_candidates):
    prompt = AnnotationPrompt(frame(), box=BOX)
    options = {
        "score_threshold": 0.0,
        "motion_weight": 0.5,
        "motion_sigma": 1.5,
        "motion_threshold": 1.0,
    }
    session = predictor.start("sot", prompt, **options)
    for _ in range(4):
        session.step(frame())
    restored = predictor.start("sot", prompt, **options)
    load_session_state(restored, session_state(session))
    assert torch.equal(restored.last_boxes, session.last_boxes)
    assert int(restored.frames_missed[0]) == 3  # the annotated frame is not a miss
    two_candidates["far_logit"] = 8.0  # after one more miss the far query wins
    chosen = []
    for _ in range(3):
        result = restored.step(frame())
        assert torch.equal(result.boxes, session.step(frame()).boxes)
        chosen.append(centre_x(result))
    assert chosen == pytest.approx([NEAR[0] * WIDTH] + [FAR[0] * WIDTH] * 2, abs=0.5)


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("motion_weight", 1.5, "motion_weight must be in"),
        ("motion_sigma", 0.0, "motion_sigma must be a finite number > 0"),
        ("motion_sigma", float("nan"), "motion_sigma must be a finite number > 0"),
        ("motion_threshold", -0.1, "motion_threshold must be in"),
    ],
)
def test_bad_motion_options_are_refused_by_name(option, value, expected):
    for task in (SingleObjectTrackingTask, VideoObjectSegmentationTask):
        with pytest.raises(ValueError, match=expected):
            task(**{option: value})


def test_evaluation_runs_the_task_with_the_models_own_settings(predictor):
    """``python -m unipercept.evaluate`` reports every answer (threshold 0) but otherwise runs
    the task as the model's settings say."""
    predictor.model.task_settings = {"vos": {"motion_weight": 0.75, "score_threshold": 0.4}}
    try:
        threshold, options = answering_options(predictor, "vos")
        session = predictor.start("vos", AnnotationPrompt(frame(), box=BOX), **options)
    finally:
        predictor.model.task_settings = {}
    assert threshold == 0.4 and session.score_threshold == 0.0
    assert session.motion_weight == 0.75
