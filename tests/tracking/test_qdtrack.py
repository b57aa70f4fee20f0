"""QDTrack: bi-softmax appearance association on synthetic scenes with known identities."""

from __future__ import annotations

import pytest
import torch

from unipercept.structures import Instances
from unipercept.tracking import QDTrack
from unipercept.tracking.matching import bisoftmax_similarity

from .scenarios import (
    CROSSING_PAIR,
    IMAGE_SIZE,
    assert_bounded_state,
    assert_one_id_per_object,
    crossing_overlap,
    make_scene,
    max_overlap,
    median_calls_per_update,
    run,
    scene_idf1,
    track_ids_by_object,
    twin_frames,
)


def test_bisoftmax_averages_both_directions():
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # (3, 2)
    memory = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # (2, 2)
    logits = embeddings @ memory.T
    expected = (logits.softmax(dim=1) + logits.softmax(dim=0)) / 2
    torch.testing.assert_close(bisoftmax_similarity(embeddings, memory), expected)


def test_perfect_detections_give_idf1_one():
    scene = make_scene(num_frames=80, num_objects=10, num_labels=2, lifespan=(20, 80), seed=2)
    assert max_overlap(scene) < 0.7  # no two objects are duplicates for the NMS
    outputs = run(QDTrack(), scene.frames)
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
    outputs = run(QDTrack(), scene.frames)
    assert scene_idf1(outputs, scene.frames) > 0.95  # misses alone cap it near 0.975


def test_crossing_objects_keep_their_ids():
    scene = make_scene(num_frames=30, num_objects=6, box_noise=1.0, seed=1)
    assert crossing_overlap(scene) > 0.5
    history = track_ids_by_object(run(QDTrack(), scene.frames), scene.frames)
    assert all(len(history[obj]) == 30 for obj in CROSSING_PAIR)
    assert_one_id_per_object(history)


def test_missed_detection_does_not_break_the_track():
    frames = make_scene(num_frames=30, num_objects=5, seed=2).frames
    frames[15] = frames[15].without(2)
    history = track_ids_by_object(run(QDTrack(), frames), frames)
    assert len(history[2]) == 29
    assert_one_id_per_object(history)


@pytest.mark.parametrize(("gap", "same_id"), [(3, True), (4, False)])
def test_track_missing_longer_than_max_lost_is_forgotten(gap, same_id):
    frames = make_scene(num_frames=25, num_objects=5, seed=3).frames
    for t in range(10, 10 + gap):
        frames[t] = frames[t].without(4)
    tracker = QDTrack(max_lost=3)
    outputs = []
    for t, frame in enumerate(frames):
        outputs.append(tracker.update(frame.detections))
        # During the gap the lost track is still held, until it is forgotten.
        expected = 5 if t < 10 + 3 or t >= 10 + gap else 4
        assert tracker.num_tracks == expected, t
    ids = track_ids_by_object(outputs, frames)[4]
    assert (len(set(ids)) == 1) == same_id
    assert ids == sorted(ids)  # a new id is a larger one


def test_state_stays_bounded_and_ids_are_never_reused():
    scene = make_scene(num_frames=500, num_objects=120, num_labels=3, lifespan=(15, 60), seed=5)
    assert_bounded_state(QDTrack(max_lost=10), scene, max_lost=10)


@pytest.mark.parametrize("with_cosine", [False, True])
def test_labels_are_respected(with_cosine):
    tracker = QDTrack(with_cosine=with_cosine)
    ids_by_label: dict[int, set[int]] = {0: set(), 1: set()}
    for frame in twin_frames(20):
        output = tracker.update(frame)
        assert len(output) == 2  # the class-aware NMS keeps both
        for label, track in zip(output.labels.tolist(), output.track_ids.tolist(), strict=True):
            ids_by_label[label].add(track)
    assert not ids_by_label[0] & ids_by_label[1]  # no id ever swapped labels
    if with_cosine:
        # Bi-softmax alone rates each twin 0.5 (the threshold, not above it): their
        # embeddings are the same. The cosine term makes them match their own label's track.
        assert len(ids_by_label[0]) == len(ids_by_label[1]) == 1


def test_low_score_detections_do_not_start_tracks():
    frames = make_scene(num_frames=20, num_objects=4, crossing=False, seed=5).frames
    frames = [frame.rescored(3, 0.4) for frame in frames]  # matchable, but not a new track
    tracker = QDTrack()
    history = track_ids_by_object(run(tracker, frames), frames)
    assert 3 not in history and tracker.num_tracks == 3
    assert_one_id_per_object(history)


def test_low_score_detections_continue_tracks_unless_below_match_score():
    frames = make_scene(num_frames=20, num_objects=4, crossing=False, seed=5).frames
    frames[5:] = [frame.rescored(0, 0.4) for frame in frames[5:]]  # enough to continue
    frames[12] = frames[12].rescored(1, 0.2)  # not matched at all, so not reported
    history = track_ids_by_object(run(QDTrack(), frames), frames)
    assert len(history[0]) == 20 and len(history[1]) == 19
    assert_one_id_per_object(history)


def test_reset_restarts_ids():
    frames = make_scene(num_frames=5, num_objects=3, seed=6).frames
    tracker = QDTrack()
    run(tracker, frames)
    tracker.reset()
    assert tracker.num_tracks == 0
    assert sorted(tracker.update(frames[0].detections).track_ids.tolist()) == [1, 2, 3]


def test_empty_frames_age_tracks_out():
    frames = make_scene(num_frames=1, num_objects=3, seed=7).frames
    tracker = QDTrack(max_lost=2)
    tracker.update(frames[0].detections)
    empty = Instances(IMAGE_SIZE)
    for _ in range(2):
        output = tracker.update(empty)
        assert len(output) == 0 and output.track_ids.shape == (0,)
        assert tracker.num_tracks == 3
    assert len(tracker.update(frames[0].detections[:0])) == 0
    assert tracker.num_tracks == 0


def test_missing_embeddings_raise():
    frame = make_scene(num_frames=1, num_objects=2, seed=8).frames[0]
    with pytest.raises(ValueError, match="embeddings"):
        QDTrack().update(frame.detections.replace(embeddings=None))


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("init_score_threshold", 1.5),
        ("match_score_threshold", -0.1),
        ("match_threshold", 2.0),
        ("memory_momentum", -1.0),
        ("max_lost", -1),
        ("nms_iou", 1.1),
    ],
)
def test_invalid_arguments_are_named(argument, value):
    with pytest.raises(ValueError, match=argument):
        QDTrack(**{argument: value})


def test_update_work_stays_bounded_with_100_tracks():
    # Counted in function calls, not timed: the same on a busy machine.
    scene = make_scene(num_frames=15, num_objects=100, crossing=False, embedding_dim=256, seed=9)
    tracker = QDTrack()
    assert median_calls_per_update(tracker, scene.frames) < 5000
    assert tracker.num_tracks >= 90
