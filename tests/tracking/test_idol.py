"""IDOL: memory-bank association and per-track summaries on synthetic scenes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from unipercept.structures import Instances, RLEMasks, boxes_to_masks
from unipercept.tracking.idol import IdolTracker

from .scenarios import (
    CROSSING_PAIR,
    IMAGE_SIZE,
    Frame,
    assert_bounded_state,
    assert_one_id_per_object,
    crossing_overlap,
    make_scene,
    max_overlap,
    median_calls_per_update,
    objects_of,
    run,
    scene_idf1,
    track_ids_by_object,
)


def test_perfect_detections_give_idf1_one():
    scene = make_scene(num_frames=80, num_objects=10, num_labels=2, lifespan=(20, 80), seed=2)
    assert max_overlap(scene) < 0.7  # no two objects are duplicates for the NMS
    outputs = run(IdolTracker(), scene.frames)
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
    # The false positives score below 0.45; at the default 0.2 each would start a track.
    outputs = run(IdolTracker(score_threshold=0.5), scene.frames)
    assert scene_idf1(outputs, scene.frames) > 0.95  # misses alone cap it near 0.975


def test_crossing_objects_keep_their_ids():
    scene = make_scene(num_frames=30, num_objects=6, box_noise=1.0, seed=1)
    assert crossing_overlap(scene) > 0.5
    history = track_ids_by_object(run(IdolTracker(), scene.frames), scene.frames)
    assert all(len(history[obj]) == 30 for obj in CROSSING_PAIR)
    assert_one_id_per_object(history)


def test_missed_detection_does_not_break_the_track():
    frames = make_scene(num_frames=30, num_objects=5, seed=2).frames
    frames[15] = frames[15].without(2)
    history = track_ids_by_object(run(IdolTracker(), frames), frames)
    assert len(history[2]) == 29
    assert_one_id_per_object(history)


def with_fragment(frame: Frame, object_id: int, score: float, seed: int) -> Frame:
    """``frame`` plus a weak second view of ``object_id``: the left half of its true box (box
    IoU 0.5 with it, kept by the NMS), an embedding like no track's, and its label; counted as
    a false positive (object -1). The object itself may be hidden (missed) in the frame."""
    box = frame.gt_boxes[frame.gt_ids == object_id]  # (1, 4)
    half = box.clone()
    half[:, 2] = (box[:, 0] + box[:, 2]) / 2
    generator = torch.Generator().manual_seed(seed)
    embedding = torch.randn(1, frame.detections.embeddings.shape[1], generator=generator)
    labels = frame.detections.labels[frame.object_ids == object_id][:1]
    fragment = Instances(
        IMAGE_SIZE,
        boxes=half,
        scores=torch.tensor([score]),
        labels=labels if len(labels) else torch.zeros(1, dtype=torch.int64),
        embeddings=4 * embedding / embedding.norm(),
    )
    return dataclasses.replace(
        frame,
        detections=Instances.cat([frame.detections, fragment]),
        object_ids=torch.cat((frame.object_ids, torch.tensor([-1]))),
    )


def test_weak_detections_continue_tracks_but_do_not_start_them():
    frames = make_scene(num_frames=20, num_objects=4, crossing=False, seed=6).frames
    frames = [frame.rescored(3, 0.3) for frame in frames]  # never confident: no track
    frames[5:] = [frame.rescored(0, 0.3) for frame in frames[5:]]  # confident first: tracked
    tracker = IdolTracker()
    history = track_ids_by_object(run(tracker, frames), frames)
    assert 3 not in history and tracker.num_tracks == 3
    assert len(history[0]) == 20
    assert_one_id_per_object(history)
    assert len(tracker.track_summaries()) == 3


def test_the_best_scored_view_of_an_object_continues_its_track():
    """IDOL's greedy matching: by decreasing score. A weak copy of an object (score 0.3, its
    embedding even closer to the track's memory) must not take the track from the confident
    detection, which would then be reported as a new object."""
    tracker = IdolTracker()
    directions = torch.eye(2, 8)  # objects A and B
    boxes = torch.tensor([[100.0, 100.0, 160.0, 220.0], [400.0, 100.0, 460.0, 220.0]])
    first = Instances(
        IMAGE_SIZE,
        boxes=boxes,
        scores=torch.tensor([0.9, 0.9]),
        labels=torch.tensor([0, 0]),
        embeddings=4 * directions,
    )
    assert tracker.update(first).track_ids.tolist() == [1, 2]
    tilted = torch.zeros(8)
    tilted[0], tilted[2] = 0.9, (1 - 0.9**2) ** 0.5  # A, cosine 0.9 with its memory
    copy = torch.zeros(8)
    copy[0], copy[3] = 0.99, (1 - 0.99**2) ** 0.5  # A's weak copy, cosine 0.99
    second = Instances(
        IMAGE_SIZE,
        boxes=torch.cat((boxes, torch.tensor([[100.0, 100.0, 130.0, 220.0]]))),  # copy: left half
        scores=torch.tensor([0.9, 0.9, 0.3]),
        labels=torch.tensor([0, 0, 0]),
        embeddings=4 * torch.stack((tilted, directions[1], copy)),
    )
    output = tracker.update(second)
    # Bi-softmax: 0.59 for A and its track, 0.91 for the copy; Hungarian matching gave the
    # track to the copy and A a new id. The copy, left unmatched and weak, is dropped.
    assert output.track_ids.tolist() == [1, 2]
    assert output.scores.tolist() == pytest.approx([0.9, 0.9])
    assert tracker.num_tracks == 2


@pytest.mark.parametrize("gap", [3, 10])
def test_object_hidden_for_a_few_frames_keeps_its_id_and_fragments_start_no_track(gap):
    """Object 4 is hidden for ``gap`` frames (up to ``max_lost``); weak fragments (left halves,
    embeddings like no track's) show up where it is and on the frame it comes back. They may
    continue its track, being views of it, but start none; the object is matched again by
    embedding when it comes back."""
    frames = make_scene(num_frames=40, num_objects=5, seed=3).frames
    for t in range(10, 10 + gap):
        frames[t] = with_fragment(frames[t].without(4), 4, score=0.3, seed=t)
    frames[10 + gap] = with_fragment(frames[10 + gap], 4, score=0.3, seed=99)
    tracker = IdolTracker(max_lost=10)
    history = track_ids_by_object(run(tracker, frames), frames)
    assert len(history[4]) == 40 - gap
    assert_one_id_per_object(history)
    assert set(history.get(-1, [])) <= set(history[4])
    assert len(tracker.track_summaries()) == 5


@pytest.mark.parametrize(("gap", "same_id"), [(3, True), (4, False)])
def test_track_missing_longer_than_max_lost_is_forgotten(gap, same_id):
    frames = make_scene(num_frames=25, num_objects=5, seed=3).frames
    for t in range(10, 10 + gap):
        frames[t] = frames[t].without(4)
    tracker = IdolTracker(max_lost=3)
    outputs = run(tracker, frames)
    ids = track_ids_by_object(outputs, frames)[4]
    assert (len(set(ids)) == 1) == same_id
    assert tracker.num_tracks == 5
    # A forgotten track still has its summary: the video needs a category for it.
    assert len(tracker.track_summaries()) == (5 if same_id else 6)


def test_state_stays_bounded_and_ids_are_never_reused():
    scene = make_scene(num_frames=500, num_objects=120, num_labels=3, lifespan=(15, 60), seed=5)
    assert_bounded_state(IdolTracker(max_lost=10), scene, max_lost=10)


def test_flickering_label_keeps_the_track_and_the_summary_takes_the_majority():
    frames = make_scene(num_frames=10, num_objects=3, crossing=False, seed=5).frames
    labels = [0, 2, 2, 1, 2, 2, 0, 2, 2, 2]  # object 0's label, frame by frame
    scores = [0.9, 0.5, 0.5, 0.9, 0.5, 0.5, 0.9, 0.5, 0.5, 0.5]
    tracker = IdolTracker()
    tracks = set()
    for frame, label, score in zip(frames, labels, scores, strict=True):
        ours = frame.object_ids == 0
        detections = frame.detections.replace(
            labels=torch.where(ours, label, frame.detections.labels),
            scores=torch.where(ours, score, frame.detections.scores),
        )
        output = tracker.update(detections)
        mine = objects_of(output, dataclasses.replace(frame, detections=detections)) == 0
        assert output.labels[mine].tolist() == [label]  # reported as given
        assert output.scores[mine].tolist() == pytest.approx([score])
        tracks.update(output.track_ids[mine].tolist())
    assert len(tracks) == 1
    summaries = tracker.track_summaries()
    assert len(summaries) == 3
    label, mean = summaries[tracks.pop()]
    assert label == 2  # 7 frames at 0.5 outweigh 2 at 0.9 for label 0
    assert mean == pytest.approx(3.5 / 10)


def test_memory_weighs_recent_embeddings_more():
    tracker = IdolTracker(memory_length=3)
    embeddings = 5 * torch.eye(4)  # one embedding per frame, all for one object
    box = torch.tensor([[10.0, 10.0, 50.0, 90.0]])
    for embedding in embeddings:
        detections = Instances(
            IMAGE_SIZE,
            boxes=box,
            scores=torch.tensor([0.9]),
            labels=torch.tensor([0]),
            embeddings=embedding[None],
        )
        # With one track and one detection, bi-softmax similarity is 1 whatever the embeddings.
        assert tracker.update(detections).track_ids.tolist() == [1]
    expected = (1 * embeddings[1] + 2 * embeddings[2] + 3 * embeddings[3]) / 6
    torch.testing.assert_close(tracker._memory(), expected[None])


@pytest.mark.parametrize("mask_kind", ["none", "dense", "rle"])
def test_duplicates_are_dropped_by_mask_iou_when_masks_are_given(mask_kind):
    boxes = torch.tensor([[100.0, 100.0, 200.0, 300.0]]).repeat(3, 1)  # (3, 4) same box
    masks = boxes_to_masks(boxes, IMAGE_SIZE)
    masks[0, :, 150:] = False  # left half
    masks[1, :, :150] = False  # right half
    masks[2, :, 150:] = False  # left half again: a duplicate of the first
    fields = {"none": None, "dense": masks, "rle": RLEMasks.from_dense(masks)}
    detections = Instances(
        IMAGE_SIZE,
        boxes=boxes,
        scores=torch.tensor([0.9, 0.8, 0.7]),
        labels=torch.tensor([0, 0, 0]),
        embeddings=torch.randn(3, 16),
        masks=fields[mask_kind],
    )
    output = IdolTracker().update(detections)
    assert output.scores.tolist() == pytest.approx([0.9] if mask_kind == "none" else [0.9, 0.8])


def test_low_score_detections_are_ignored():
    frames = make_scene(num_frames=20, num_objects=4, crossing=False, seed=6).frames
    frames = [frame.rescored(3, 0.1) for frame in frames]
    frames[8] = frames[8].rescored(0, 0.1)
    tracker = IdolTracker()
    history = track_ids_by_object(run(tracker, frames), frames)
    assert 3 not in history and tracker.num_tracks == 3
    assert len(history[0]) == 19
    assert_one_id_per_object(history)


def test_reset_restarts_ids_and_summaries():
    frames = make_scene(num_frames=5, num_objects=3, seed=7).frames
    tracker = IdolTracker()
    run(tracker, frames)
    tracker.reset()
    assert tracker.num_tracks == 0 and tracker.track_summaries() == {}
    assert sorted(tracker.update(frames[0].detections).track_ids.tolist()) == [1, 2, 3]
    assert set(tracker.track_summaries()) == {1, 2, 3}


def test_empty_frames_age_tracks_out():
    frames = make_scene(num_frames=1, num_objects=3, seed=8).frames
    tracker = IdolTracker(max_lost=2)
    tracker.update(frames[0].detections)
    for _ in range(2):
        output = tracker.update(Instances(IMAGE_SIZE))
        assert len(output) == 0 and output.track_ids.shape == (0,)
        assert tracker.num_tracks == 3
    assert len(tracker.update(frames[0].detections[:0])) == 0
    assert tracker.num_tracks == 0


def test_missing_embeddings_raise():
    frame = make_scene(num_frames=1, num_objects=2, seed=9).frames[0]
    with pytest.raises(ValueError, match="embeddings"):
        IdolTracker().update(frame.detections.replace(embeddings=None))


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("score_threshold", 1.5),
        ("new_track_threshold", 1.5),
        ("match_threshold", -0.5),
        ("memory_length", 0),
        ("max_lost", -1),
        ("nms_iou", 2.0),
    ],
)
def test_invalid_arguments_are_named(argument, value):
    with pytest.raises(ValueError, match=argument):
        IdolTracker(**{argument: value})


def test_update_work_stays_bounded_with_100_tracks():
    # Counted in function calls, not timed: the same on a busy machine.
    scene = make_scene(num_frames=15, num_objects=100, crossing=False, embedding_dim=256, seed=10)
    tracker = IdolTracker()
    assert median_calls_per_update(tracker, scene.frames) < 1000
    assert tracker.num_tracks >= 90
