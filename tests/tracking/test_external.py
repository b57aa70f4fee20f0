"""ExternalTracker: the `trackers` package's trackers through update(Instances) -> Instances."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

from unipercept import config
from unipercept.structures import Instances
from unipercept.tracking import ExternalTracker
from unipercept.tracking.external import EXTERNAL_TRACKERS

from .scenarios import (
    IMAGE_SIZE,
    assert_one_id_per_object,
    make_scene,
    run,
    track_ids_by_object,
    twin_frames,
)


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


needs_trackers = pytest.mark.skipif(
    not _importable("trackers"),
    reason="Roboflow's trackers package is optional: pip install supervision rich && "
    "pip install --no-deps trackers",
)


def test_a_missing_package_is_an_import_error_naming_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "trackers", None)  # what an absent package does to import
    with pytest.raises(ImportError, match="pip install --no-deps trackers"):
        ExternalTracker("bytetrack")


def test_an_unknown_name_is_named_before_the_package_is_needed():
    with pytest.raises(ValueError, match="bytetrack, ocsort.*'deepsort'"):
        ExternalTracker("deepsort")


@needs_trackers
def test_an_unknown_option_is_named_with_the_accepted_ones():
    with pytest.raises(ValueError, match="track_thresh.*lost_track_buffer"):
        ExternalTracker("bytetrack", track_thresh=0.5)


def _textured_frame() -> torch.Tensor:
    """A still, textured (3, H, W) uint8 background: camera-motion compensation finds no
    motion in it."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, *IMAGE_SIZE), dtype=torch.uint8, generator=generator)


@needs_trackers
@pytest.mark.parametrize("name", sorted(EXTERNAL_TRACKERS))
def test_every_tracker_follows_moving_objects_with_one_id_each(name):
    scene = make_scene(num_frames=30, num_objects=6, num_labels=2, crossing=False, seed=4)
    tracker = ExternalTracker(name)
    image = _textured_frame()
    outputs = [tracker.update(frame.detections, image) for frame in scene.frames]
    history = track_ids_by_object(outputs, scene.frames)  # checks the boxes are the given ones
    assert_one_id_per_object(history)
    assert sorted(history) == list(range(6))
    # The package confirms a track after a few frames (minimum_consecutive_frames, 2 or 3).
    assert all(len(ids) >= 27 for ids in history.values())
    assert all(i > 0 for ids in history.values() for i in ids)
    for output, frame in zip(outputs, scene.frames, strict=True):
        assert output.embeddings is not None  # every field of the detections is kept
        assert output.track_ids.dtype == torch.int64
        assert len(output) <= len(frame.detections)


@needs_trackers
def test_the_adapter_reports_exactly_what_the_package_decides():
    # Noise, misses and low-score false positives: the package drops and delays some
    # detections; the adapter must report the same rows under a one-to-one id mapping.
    scene = make_scene(
        num_frames=40, num_objects=8, box_noise=2.0, miss_rate=0.1, false_positives=2, seed=5
    )
    ours = ExternalTracker("bytetrack", per_label=False, minimum_consecutive_frames=2)
    theirs = importlib.import_module("trackers").ByteTrackTracker(minimum_consecutive_frames=2)
    mapping: dict[int, int] = {}
    for frame in scene.frames:
        detections = frame.detections
        output = ours.update(detections)
        given = detections.to_supervision()
        given.data["row"] = np.arange(len(detections))
        expected = theirs.update(given)
        confirmed = expected.tracker_id >= 0
        rows = expected.data["row"][confirmed]
        order = np.argsort(rows)
        assert torch.equal(output.boxes, detections.boxes[torch.as_tensor(rows[order])])
        for our_id, their_id in zip(
            output.track_ids.tolist(), expected.tracker_id[confirmed][order].tolist(), strict=True
        ):
            assert mapping.setdefault(their_id, our_id) == our_id
    assert len(set(mapping.values())) == len(mapping) >= 8  # one-to-one, every object followed


@needs_trackers
def test_per_label_trackers_keep_labels_apart():
    # Both objects have the same box in every frame: only their labels tell them apart.
    tracker = ExternalTracker("bytetrack")
    ids_by_label: dict[int, set[int]] = {0: set(), 1: set()}
    for frame in twin_frames(20):
        output = tracker.update(frame)
        for label, track in zip(output.labels.tolist(), output.track_ids.tolist(), strict=True):
            ids_by_label[label].add(track)
    assert len(ids_by_label[0]) == len(ids_by_label[1]) == 1
    assert ids_by_label[0] != ids_by_label[1]


@needs_trackers
def test_ids_are_never_reused_and_the_state_stays_bounded():
    scene = make_scene(num_frames=200, num_objects=60, num_labels=2, lifespan=(10, 40), seed=6)
    tracker = ExternalTracker("bytetrack", lost_track_buffer=5)
    last_seen: dict[int, int] = {}  # track id -> last frame reported
    for t, frame in enumerate(scene.frames):
        ids = set(tracker.update(frame.detections).track_ids.tolist())
        new = sorted(ids - set(last_seen))
        assert new == list(range(len(last_seen) + 1, len(last_seen) + 1 + len(new))), t
        assert all(t - last_seen[i] <= 5 + 1 for i in ids - set(new)), t
        last_seen.update(dict.fromkeys(ids, t))
        assert tracker.num_tracks <= scene.live_or_recently_lost(t, max_lost=5), t
        assert len(tracker._ids) <= tracker.num_tracks, t  # forgotten tracks' ids go too
    assert len(last_seen) >= 50  # it did follow the objects (a few merge where they overlap)


@needs_trackers
def test_empty_frames_and_reset():
    frames = make_scene(num_frames=4, num_objects=3, crossing=False, seed=7).frames
    tracker = ExternalTracker("bytetrack")
    assert len(tracker.update(frames[0].detections)) == 0  # the package confirms a track later
    assert sorted(tracker.update(frames[1].detections).track_ids.tolist()) == [1, 2, 3]
    empty = tracker.update(Instances(IMAGE_SIZE))
    assert len(empty) == 0 and empty.track_ids.shape == (0,)
    assert tracker.num_tracks == 3  # lost, not forgotten
    assert sorted(tracker.update(frames[3].detections).track_ids.tolist()) == [1, 2, 3]
    tracker.reset()
    assert tracker.num_tracks == 0
    tracker.update(frames[0].detections)
    assert sorted(tracker.update(frames[1].detections).track_ids.tolist()) == [1, 2, 3]


@needs_trackers
def test_the_tracker_config_builds_a_fresh_external_tracker_per_video():
    task = config.instantiate(
        config.compose(
            "train", ["stage=2_image_joint", "+task=mot", "tracker@task.tracker=external"]
        ).task
    )
    first, second = task.tracker(), task.tracker()
    assert isinstance(first, ExternalTracker) and first is not second
    assert first.name == "ocsort"
    frames = make_scene(num_frames=10, num_objects=3, crossing=False, seed=8).frames
    assert_one_id_per_object(track_ids_by_object(run(first, frames), frames))
