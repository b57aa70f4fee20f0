"""The six video tasks end to end: a tiny model, generated videos, sessions fed frame by frame.

The tiny model is untrained, so these tests check what the session guarantees whatever the
model says: the first-frame answer, track ids, shapes in the frame's pixels, thresholds,
template updates, the trackers receiving what they need, the VIS and R-VOS summaries, video
files as input, errors, and memory that does not grow with the video. Association quality is
tested on generated tracks with known identities in tests/tracking/.
"""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch

from unipercept.api import Predictor
from unipercept.data.preprocess import ImagePreprocessor
from unipercept.data.video import VideoWriter, open_frames
from unipercept.structures import (
    AnnotationPrompt,
    CategoryPrompt,
    ExpressionPrompt,
    Instances,
    boxes_to_masks,
)
from unipercept.tasks import TASKS, AnnotationSession, ReferringSession, TrackingSession
from unipercept.tracking import ByteTrack, FlowTracker, IdolTracker, QDTrack

from ..modeling.tiny import tiny_unipercept

HEIGHT, WIDTH = 64, 96

# Trackers that accept the untrained model's low scores, so that tracks exist at all.
TRACKERS = {
    "qdtrack": partial(
        QDTrack, init_score_threshold=0.0, match_score_threshold=0.0, match_threshold=0.0
    ),
    "idol": partial(IdolTracker, score_threshold=0.0, new_track_threshold=0.0, match_threshold=0.0),
    "bytetrack": partial(ByteTrack, high_threshold=0.0, low_threshold=0.0, new_track_threshold=0.0),
    "flow": partial(FlowTracker, score_threshold=0.0, iou_threshold=0.0),
}


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(tiny_unipercept(), preprocess=ImagePreprocessor(short_size=64, max_size=96))


def square_frame(index: int, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """A red square moving right 3 px per frame over a fixed gradient."""
    ys = torch.linspace(0, 120, height).view(height, 1).expand(height, width)
    frame = torch.stack([ys, ys.flip(0), torch.full((height, width), 60.0)]).to(torch.uint8)
    x = 8 + 3 * index
    frame[:, 20:40, x : x + 20] = torch.tensor([220, 30, 30], dtype=torch.uint8).view(3, 1, 1)
    return frame


def moving_video(frames: int) -> list[torch.Tensor]:
    return [square_frame(i) for i in range(frames)]


def check_frame_result(result, *, masks: bool) -> None:
    assert result.image_size == (HEIGHT, WIDTH)
    ids = result.track_ids.tolist()
    assert len(set(ids)) == len(ids) and all(i >= 1 for i in ids)
    if len(result):
        boxes = result.boxes
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= WIDTH).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= HEIGHT).all()
    if masks:
        assert result.masks.dtype == torch.bool
        assert result.masks.shape == (len(result), HEIGHT, WIDTH)


# ---------------------------------------------------------------- SOT and VOS


def test_sot_answers_the_annotation_first_then_one_box_per_frame(predictor):
    frames = moving_video(6)
    box = [8.0, 20.0, 28.0, 40.0]
    with predictor.start("sot", AnnotationPrompt(frames[0], box=box), score_threshold=0.0) as s:
        assert isinstance(s, AnnotationSession)
        results = list(s.run(frames))
    assert torch.equal(results[0].boxes, torch.tensor([box]))
    assert results[0].scores.tolist() == [1.0] and results[0].track_ids.tolist() == [1]
    for result in results[1:]:
        check_frame_result(result, masks=False)
        assert result.track_ids.tolist() == [1]  # threshold 0: always found
    assert s.closed


def test_sot_reports_the_target_absent_below_the_score_threshold(predictor):
    frames = moving_video(4)
    session = predictor.start("sot", AnnotationPrompt(frames[0], box=[8, 20, 28, 40]))
    session.score_threshold = 1.0  # no combined score reaches 1
    results = list(session.run(frames))
    assert len(results[0]) == 1
    for result in results[1:]:
        assert len(result) == 0 and result.boxes.shape == (0, 4)
        assert result.image_size == (HEIGHT, WIDTH)


@pytest.fixture
def large_boxes(predictor):
    """Makes every query's final box a large one (the untrained model's are often sub-pixel,
    which a template update rightly skips)."""

    def hook(module, inputs, output):
        output.boxes[-1][..., :] = torch.tensor([0.3, 0.45, 0.25, 0.3])  # cxcywh, normalised

    handle = predictor.model.register_forward_hook(hook)
    yield
    handle.remove()


@pytest.mark.parametrize("threshold, changes", [(0.0, True), (1.0, False)])
def test_sot_template_updates_on_interval_and_score(predictor, large_boxes, threshold, changes):
    frames = moving_video(5)
    session = predictor.start(
        "sot",
        AnnotationPrompt(frames[0], box=[8, 20, 28, 40]),
        score_threshold=0.0,
        update_interval=2,
        update_threshold=threshold,
    )
    first = session.first_templates.tokens.clone()
    # Until an update, the latest template is the first: the prompt is the first twice.
    assert torch.equal(session.templates.tokens, torch.cat([first, first], 1))
    session.step(frames[0])
    session.step(frames[1])  # frame 1: not on the interval
    assert torch.equal(session.latest_templates.tokens, first)
    session.step(frames[2])  # frame 2: on the interval, updated if found well enough
    assert torch.equal(session.latest_templates.tokens, first) is not changes
    # The annotation's template is kept; the prompt is the first and the latest.
    assert torch.equal(session.first_templates.tokens, first)
    joined = torch.cat([first, session.latest_templates.tokens], 1)
    assert torch.equal(session.templates.tokens, joined)


def test_sot_and_vos_run_on_the_template_path():
    torch.manual_seed(0)
    model = tiny_unipercept(annotation_encoder="template")
    predictor = Predictor(model, preprocess=ImagePreprocessor(short_size=64, max_size=96))
    frames = moving_video(4)
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    mask[20:40, 8:28] = True
    for task, prompt in (
        ("sot", AnnotationPrompt(frames[0], box=[8, 20, 28, 40])),
        ("vos", AnnotationPrompt(frames[0], mask=mask)),
    ):
        session = predictor.start(task, prompt, score_threshold=0.0, update_interval=1)
        results = list(session.run(frames))
        for result in results[1:]:
            check_frame_result(result, masks=task == "vos")
            assert result.track_ids.tolist() == [1]


def test_vos_follows_several_objects_from_masks_and_boxes(predictor):
    frames = moving_video(5)
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    mask[20:40, 8:28] = True
    prompts = [
        AnnotationPrompt(frames[0], mask=mask),
        AnnotationPrompt(frames[0], box=[50, 5, 90, 15]),
    ]
    session = predictor.start("vos", prompts, score_threshold=0.0)
    results = list(session.run(frames))
    assert torch.equal(results[0].masks[0], mask)
    assert results[0].masks[1].sum() == 40 * 10  # the box as a mask
    assert results[0].track_ids.tolist() == [1, 2]
    for result in results[1:]:
        check_frame_result(result, masks=True)
        assert result.track_ids.tolist() == [1, 2]
    assert session.close().frames == 5


def test_sot_takes_exactly_one_annotation(predictor):
    frame = square_frame(0)
    two = [AnnotationPrompt(frame, box=[1, 1, 9, 9]), AnnotationPrompt(frame, box=[2, 2, 8, 8])]
    with pytest.raises(ValueError, match="one target"):
        predictor.start("sot", two)
    with pytest.raises(ValueError, match="AnnotationPrompt"):
        predictor.start("vos", [CategoryPrompt(["square"])])


# ---------------------------------------------------------------- MOT, MOTS, VIS


@pytest.mark.parametrize("tracker", sorted(TRACKERS))
@pytest.mark.parametrize("task", ["mot", "mots", "vis"])
def test_tracking_tasks_keep_ids_on_a_still_video(predictor, task, tracker):
    frame = square_frame(3)
    session = predictor.start(
        task, "square. circle", tracker=TRACKERS[tracker], score_threshold=0.0
    )
    if tracker == "flow" and task == "mot":
        with pytest.raises(ValueError, match="FlowTracker needs detections.masks"):
            session.step(frame)  # it warps masks, and MOT has none: said, not a crash
        return
    assert isinstance(session, TrackingSession)
    results = list(session.run([frame] * 4))
    first_ids = sorted(results[0].track_ids.tolist())
    assert first_ids, "thresholds of 0 must start tracks"
    for result in results:
        check_frame_result(result, masks=task != "mot")
        # The same frame gives the same detections, which every tracker must associate with
        # the tracks they started.
        assert sorted(result.track_ids.tolist()) == first_ids
    summary = session.close()
    assert summary.frames == 4
    if task == "vis":
        assert sorted(summary.track_labels) == first_ids
        for label, score in summary.track_labels.values():
            assert label in (0, 1) and 0.0 < score <= 1.0
    else:
        assert summary.track_labels == {}


def test_vis_gives_each_track_its_majority_label(predictor):
    session = predictor.start(
        "vis", "square. circle", tracker=TRACKERS["idol"], score_threshold=0.0
    )
    seen: dict[int, dict[int, float]] = {}
    for result in session.run(moving_video(5)):
        for track, label, score in zip(
            result.track_ids.tolist(), result.labels.tolist(), result.scores.tolist(), strict=True
        ):
            seen.setdefault(track, {}).setdefault(label, 0.0)
            seen[track][label] += score
    summary = session.close()
    assert set(summary.track_labels) == set(seen)
    for track, (label, _) in summary.track_labels.items():
        assert label == max(seen[track], key=seen[track].get)


@pytest.mark.parametrize("task", ["mot", "mots", "vis"])
def test_tracking_tasks_follow_an_object_answered_under_two_names_as_one_track(task):
    """A query scoring high for two names answers one shape twice, with the same box, mask and
    embedding. The task's per-frame suppression (applied by the session before the tracker)
    keeps its best name only, so the default tracker follows one track; label-aware QDTrack
    followed two."""
    resolved = TASKS[task]()
    tracker = resolved.tracker()
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, 16, generator=generator)
    ids = set()
    for t in range(6):
        box = torch.tensor([[10.0 + 3 * t, 10.0, 40.0 + 3 * t, 50.0]])
        detections = Instances(
            (HEIGHT, WIDTH),
            boxes=box.repeat(2, 1),
            scores=torch.tensor([0.9, 0.6]),
            labels=torch.tensor([0, 1]),
            embeddings=(4 * embedding / embedding.norm()).repeat(2, 1),
            masks=boxes_to_masks(box, (HEIGHT, WIDTH)).repeat(2, 1, 1),
        )
        tracked = tracker.update(resolved.detector.suppression(detections))
        assert tracked.labels.tolist() == [0]
        ids.update(tracked.track_ids.tolist())
    assert ids == {1}


def test_mot_reads_an_mp4_frame_by_frame(predictor, tmp_path):
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=10, width=WIDTH, height=HEIGHT) as writer:
        for frame in moving_video(6):
            writer.write(frame)
    session = predictor.start("mot", ["square", "circle"], tracker=TRACKERS["bytetrack"])
    with open_frames(path) as source:
        results = list(session.run(source))
    assert len(results) == 6
    for result in results:
        check_frame_result(result, masks=False)
    assert session.close().frames == 6


def test_category_prompt_is_encoded_once_per_video(predictor, monkeypatch):
    calls = []
    encode = predictor.model.encode_prompts
    monkeypatch.setattr(
        predictor.model, "encode_prompts", lambda prompts: calls.append(prompts) or encode(prompts)
    )
    session = predictor.start("mots", "square", tracker=TRACKERS["qdtrack"])
    for frame in moving_video(3):
        session.step(frame)
    assert len(calls) == 1


# ---------------------------------------------------------------- R-VOS


def test_rvos_online_gives_the_top1_mask_every_frame(predictor):
    session = predictor.start("rvos", "the red square on the left")
    assert isinstance(session, ReferringSession)
    for result in session.run(moving_video(4)):
        check_frame_result(result, masks=True)
        assert result.track_ids.tolist() == [1]
    summary = session.close()
    assert summary.voted_track is None  # no vote without vote=True
    with pytest.raises(ValueError, match="vote=True"):
        next(session.replay(moving_video(1), 1))


def test_rvos_vote_picks_one_trajectory_and_replays_it(predictor):
    frames = [square_frame(2)] * 4
    session = predictor.start(
        "rvos", ExpressionPrompt("the red square"), vote=True, tracker=TRACKERS["qdtrack"]
    )
    online = list(session.run(frames))
    summary = session.close()
    assert summary.voted_track is not None
    replayed = list(session.replay(frames, summary.voted_track))
    assert len(replayed) == len(online)
    # A still video keeps every trajectory alive, so the voted one is found in every frame.
    for result in replayed:
        check_frame_result(result, masks=True)
        assert result.track_ids.tolist() == [1]
    assert all(torch.equal(r.masks, replayed[0].masks) for r in replayed)
    assert list(session.replay(frames, 10_000)) != replayed  # an unknown track is never found
    assert all(len(r) == 0 for r in session.replay(frames, 10_000))


# ---------------------------------------------------------------- the session contract


def test_sessions_come_from_the_predictor_not_the_model(predictor):
    """The model does not know the tasks (layers point down): no model.start / model.predict;
    a Predictor on the model resizes as the model's default_preprocess by default."""
    assert not hasattr(predictor.model, "start") and not hasattr(predictor.model, "predict")
    default = Predictor(predictor.model).preprocess
    expected = predictor.model.default_preprocess()
    assert (default.short_size, default.max_size) == (expected.short_size, expected.max_size)
    session = predictor.start("mot", "square", tracker=TRACKERS["bytetrack"])
    assert isinstance(session, TrackingSession) and session.model is predictor.model
    assert session.step(square_frame(0)).image_size == (HEIGHT, WIDTH)


def test_closed_sessions_and_bad_frames_are_refused(predictor):
    session = predictor.start("mot", "square", tracker=TRACKERS["bytetrack"])
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        session.step(torch.zeros(HEIGHT, WIDTH, dtype=torch.uint8))
    session.step(square_frame(0))
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.step(square_frame(1))


def test_predictor_routes_image_and_video_tasks(predictor):
    frame = square_frame(0)
    with pytest.raises(ValueError, match="video task"):
        predictor.predict(frame, "square", task="mot")
    with pytest.raises(ValueError, match="image task"):
        predictor.start("det", "square")
    with pytest.raises(ValueError, match="unknown task 'track'"):
        predictor.start("track", "square")
    with pytest.raises(ValueError, match="CategoryPrompt"):
        predictor.start("mot", ExpressionPrompt("a red square"))
    with pytest.raises(ValueError, match="ExpressionPrompt"):
        predictor.start("rvos", CategoryPrompt(["square"]))
    detections = predictor.predict(frame, "square. circle", task="det", score_threshold=0.0)
    assert detections.image_size == (HEIGHT, WIDTH) and len(detections) > 0


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc for RSS")
def test_a_thousand_frame_session_stays_within_a_memory_bound(predictor):
    # Every frame returns 10 masks of 64x96 (60 KB); a session that kept its outputs would
    # grow by ~50 MB over the 800 measured frames.
    session = predictor.start(
        "vis", "square. circle", tracker=TRACKERS["idol"], score_threshold=0.0
    )
    tracks = []
    baseline = None
    for index in range(1000):
        result = session.step(square_frame(index % 20))  # the square sweeps across, again and again
        assert result.masks.shape[1:] == (HEIGHT, WIDTH)
        tracks.append(session.tracker.num_tracks)
        if index == 199:
            baseline = _rss_bytes()
    growth = _rss_bytes() - baseline
    assert growth < 20 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 800 frames"
    assert max(tracks) <= 3 * 10  # live tracks plus those lost within max_lost frames
    assert session.close().frames == 1000
