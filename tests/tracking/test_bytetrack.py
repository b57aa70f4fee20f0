"""ByteTrack: two-round IoU association with Kalman-filter motion on synthetic scenes."""

from __future__ import annotations

import pytest
import torch

from unipercept import config
from unipercept.structures import Instances
from unipercept.tracking import ByteTrack
from unipercept.tracking.matching import hungarian_match

from .scenarios import (
    CROSSING_PAIR,
    IMAGE_SIZE,
    assert_bounded_state,
    assert_one_id_per_object,
    crossing_overlap,
    idf1,
    make_scene,
    median_calls_per_update,
    run,
    scene_idf1,
    track_ids_by_object,
    twin_frames,
)


def test_hungarian_match_maximises_the_total_over_feasible_pairs():
    score = torch.tensor([[0.9, 0.8], [0.85, 0.1], [0.3, 0.2]])  # (3, 2)
    rows, columns = hungarian_match(score, score >= 0.2)
    assert sorted(zip(rows.tolist(), columns.tolist(), strict=True)) == [(0, 1), (1, 0)]
    rows, columns = hungarian_match(score, score >= 0.95)
    assert len(rows) == len(columns) == 0


def test_idf1_counts_an_identity_switch():
    boxes = [torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])] * 10
    gt_ids = [torch.tensor([1, 2])] * 10
    assert idf1(gt_ids, boxes, gt_ids, boxes) == 1.0
    # Halfway the two tracks swap objects: each object is its best track's for 5 frames of 10.
    swapped = [torch.tensor([7, 9])] * 5 + [torch.tensor([9, 7])] * 5
    assert idf1(gt_ids, boxes, swapped, boxes) == pytest.approx(0.5)


def test_perfect_detections_give_idf1_one():
    scene = make_scene(num_frames=80, num_objects=10, num_labels=2, lifespan=(20, 80), seed=2)
    outputs = run(ByteTrack(), scene.frames)
    assert scene_idf1(outputs, scene.frames) == 1.0
    assert_one_id_per_object(track_ids_by_object(outputs, scene.frames))


def test_noisy_detections_keep_idf1_high():
    scene = make_scene(
        num_frames=80,
        num_objects=10,
        num_labels=2,
        lifespan=(20, 80),
        box_noise=2.0,
        miss_rate=0.05,
        false_positives=2,
        seed=2,
    )
    outputs = run(ByteTrack(), scene.frames)
    assert scene_idf1(outputs, scene.frames) > 0.95  # misses alone cap it near 0.975


@pytest.mark.parametrize("motion", ["kalman", "constant_velocity", "none"])
def test_crossing_objects_keep_their_ids_thanks_to_motion(motion):
    for crossing_at_frame in (True, False):
        scene = make_scene(
            num_frames=30, num_objects=6, box_noise=1.0, crossing_at_frame=crossing_at_frame, seed=1
        )
        assert crossing_overlap(scene) > (0.5 if crossing_at_frame else 0.35)
        tracker = ByteTrack(motion=motion)
        history = track_ids_by_object(run(tracker, scene.frames), scene.frames)
        if motion != "none" or crossing_at_frame:
            assert_one_id_per_object(history)
        else:  # passing between frames, their last boxes are closer to the other object
            assert all(len(set(history[obj])) == 2 for obj in CROSSING_PAIR)


def one_moving_box(
    num_frames: int,
    speed: float,
    *,
    missing: range = range(0),
    low_score: range = range(0),
    noise: float = 0.0,
    seed: int = 0,
) -> list[Instances]:
    """A 40x100 box moving right at ``speed`` pixels a frame: undetected in the ``missing``
    frames, scoring 0.3 (below ByteTrack's high threshold) in the ``low_score`` ones, 0.9
    elsewhere, each coordinate off by ``noise`` pixels (standard deviation)."""
    generator = torch.Generator().manual_seed(seed)
    frames = []
    for t in range(num_frames):
        x = 20.0 + speed * t
        box = torch.tensor([[x, 200.0, x + 40.0, 300.0]])
        box += noise * torch.randn(1, 4, generator=generator)
        score = torch.tensor([0.3 if t in low_score else 0.9])
        detections = Instances(IMAGE_SIZE, boxes=box, scores=score, labels=torch.tensor([0]))
        frames.append(detections[:0] if t in missing else detections)
    return frames


def _track_ids(tracker: ByteTrack, frames: list[Instances]) -> list[int]:
    """The track ids reported over the video, frame after frame."""
    return [i for frame in frames for i in tracker.update(frame).track_ids.tolist()]


@pytest.mark.parametrize(("motion", "same_id"), [("kalman", True), ("none", False)])
def test_kalman_prediction_carries_a_track_through_an_occlusion(motion, same_id):
    # Unseen for 5 frames it moves 50 pixels, more than its width: its last box no longer
    # overlaps it, the box the Kalman filter predicts does.
    frames = one_moving_box(40, speed=10.0, missing=range(20, 25))
    ids = _track_ids(ByteTrack(motion=motion), frames)
    assert len(ids) == 35
    assert (set(ids) == {1}) == same_id


@pytest.mark.parametrize("motion", ["kalman", "constant_velocity", "none"])
def test_a_constantly_moving_object_keeps_one_id(motion):
    # Every 4th frame missed from frame 10 on: over two frames it moves 28 pixels of its 40,
    # IoU 0.18 with its last box, below match_iou.
    frames = one_moving_box(60, speed=14.0, missing=range(10, 60, 4), noise=1.0)
    ids = _track_ids(ByteTrack(motion=motion), frames)
    assert len(ids) == 60 - len(range(10, 60, 4))
    assert (len(set(ids)) == 1) == (motion != "none")


def test_kalman_filter_smooths_noisy_boxes_better_than_the_last_displacement():
    # Extrapolating the last (noisy) displacement over a 7-frame gap misses the object in
    # about half the videos; the Kalman filter's velocity, estimated over many frames, not.
    switched = {"kalman": 0, "constant_velocity": 0}
    for seed in range(10):
        frames = one_moving_box(40, speed=8.0, missing=range(20, 27), noise=3.0, seed=seed)
        for motion in switched:
            switched[motion] += len(set(_track_ids(ByteTrack(motion=motion), frames))) > 1
    assert switched["kalman"] == 0
    assert switched["constant_velocity"] >= 3


@pytest.mark.parametrize(("motion", "reported"), [("kalman", 40), ("none", 30)])
def test_low_score_detections_join_the_predicted_box_in_the_second_round(motion, reported):
    # Scoring 0.3 for 10 frames, the object is matched only in the second round, which needs
    # IoU 0.5: its last box overlaps it by 0.48, the predicted one by more.
    frames = one_moving_box(40, speed=14.0, low_score=range(15, 25), noise=1.0)
    ids = _track_ids(ByteTrack(motion=motion), frames)
    assert len(ids) == reported
    if motion == "kalman":
        assert set(ids) == {1}


def test_a_lost_track_is_predicted_frame_after_frame_even_without_detections():
    tracker = ByteTrack()
    frames = one_moving_box(20, speed=10.0)
    _track_ids(tracker, frames[:15])
    for _ in range(3):  # empty frames: no detection to match, the track moves on
        tracker.update(Instances(IMAGE_SIZE))
    assert _track_ids(tracker, frames[18:]) == [1, 1]


def test_missed_detection_does_not_break_the_track():
    frames = make_scene(num_frames=30, num_objects=5, seed=2).frames
    frames[15] = frames[15].without(2)
    history = track_ids_by_object(run(ByteTrack(), frames), frames)
    assert len(history[2]) == 29
    assert_one_id_per_object(history)


@pytest.mark.parametrize(("gap", "same_id"), [(3, True), (4, False)])
def test_track_missing_longer_than_max_lost_is_forgotten(gap, same_id):
    frames = make_scene(num_frames=25, num_objects=5, seed=3).frames
    for t in range(10, 10 + gap):
        frames[t] = frames[t].without(4)
    tracker = ByteTrack(max_lost=3)
    ids = track_ids_by_object(run(tracker, frames), frames)[4]
    assert (len(set(ids)) == 1) == same_id
    assert tracker.num_tracks == 5


def test_state_stays_bounded_and_ids_are_never_reused():
    scene = make_scene(num_frames=500, num_objects=120, num_labels=3, lifespan=(15, 60), seed=5)
    assert_bounded_state(ByteTrack(max_lost=10), scene, max_lost=10)


def test_labels_are_respected():
    tracker = ByteTrack()
    ids_by_label: dict[int, set[int]] = {0: set(), 1: set()}
    for frame in twin_frames(20):
        output = tracker.update(frame)
        for label, track in zip(output.labels.tolist(), output.track_ids.tolist(), strict=True):
            ids_by_label[label].add(track)
    assert len(ids_by_label[0]) == len(ids_by_label[1]) == 1
    assert ids_by_label[0] != ids_by_label[1]


def test_low_score_detections_continue_live_tracks_but_do_not_start_tracks():
    frames = make_scene(num_frames=20, num_objects=5, crossing=False, seed=3).frames
    frames = [frame.rescored(3, 0.3) for frame in frames]  # low: never starts a track
    frames = [frame.rescored(4, 0.65) for frame in frames]  # high, but not enough to start
    frames[5:] = [frame.rescored(0, 0.3) for frame in frames[5:]]  # low, continues its track
    frames[8] = frames[8].rescored(1, 0.05)  # below low_threshold: ignored, the track is lost
    frames[9] = frames[9].rescored(1, 0.3)  # low: cannot revive a lost track
    tracker = ByteTrack()
    history = track_ids_by_object(run(tracker, frames), frames)
    assert 3 not in history and 4 not in history and tracker.num_tracks == 3
    assert len(history[0]) == 20 and len(history[1]) == 18
    assert_one_id_per_object(history)


def test_reset_restarts_ids():
    frames = make_scene(num_frames=5, num_objects=3, seed=6).frames
    tracker = ByteTrack()
    run(tracker, frames)
    tracker.reset()
    assert tracker.num_tracks == 0
    assert sorted(tracker.update(frames[0].detections).track_ids.tolist()) == [1, 2, 3]


def test_empty_frames_age_tracks_out():
    frames = make_scene(num_frames=1, num_objects=3, seed=7).frames
    tracker = ByteTrack(max_lost=2)
    tracker.update(frames[0].detections)
    for _ in range(2):
        output = tracker.update(Instances(IMAGE_SIZE))
        assert len(output) == 0 and output.track_ids.shape == (0,)
        assert tracker.num_tracks == 3
    assert len(tracker.update(frames[0].detections[:0])) == 0
    assert tracker.num_tracks == 0


def test_embeddings_are_not_needed():
    frame = make_scene(num_frames=1, num_objects=2, seed=8).frames[0]
    output = ByteTrack().update(frame.detections.replace(embeddings=None))
    assert sorted(output.track_ids.tolist()) == [1, 2]


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("high_threshold", 1.5),
        ("low_threshold", 0.8),  # above high_threshold
        ("new_track_threshold", -0.1),
        ("match_iou", 2.0),
        ("second_match_iou", -1.0),
        ("max_lost", -1),
        ("motion", "linear"),
    ],
)
def test_invalid_arguments_are_named(argument, value):
    with pytest.raises(ValueError, match=argument):
        ByteTrack(**{argument: value})


def test_the_shipped_config_uses_the_kalman_filter():
    factory = config.instantiate(config.compose_group_option("tracker", "bytetrack"))
    tracker = factory()
    assert isinstance(tracker, ByteTrack) and tracker.motion == "kalman"
    assert factory() is not tracker  # a fresh tracker per video


def test_update_work_stays_bounded_with_100_tracks():
    # Counted in function calls, not timed: the same on a busy machine.
    scene = make_scene(num_frames=15, num_objects=100, crossing=False, seed=9)
    tracker = ByteTrack()
    assert median_calls_per_update(tracker, scene.frames) < 1000
    assert tracker.num_tracks >= 90
