"""Synthetic tracking scenes with known identities, and IDF1 through TrackEval, shared by the
tracker tests."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from unipercept.structures import Instances, box_iou
from unipercept.tracking.base import Tracker

IMAGE_SIZE = (480, 640)  # (height, width)
CROSSING_PAIR = (0, 1)  # object ids of the pair that crosses, when a scene has one


@dataclass(frozen=True)
class Frame:
    gt_ids: Tensor  # (G,) ids of the visible objects
    gt_boxes: Tensor  # (G, 4) their true boxes
    detections: Instances  # boxes, scores, labels, embeddings, in shuffled order
    object_ids: Tensor  # (N,) object of each detection, -1 for a false positive

    def without(self, object_id: int) -> Frame:
        """This frame with ``object_id`` missed by the detector (still in the ground truth)."""
        keep = self.object_ids != object_id
        return dataclasses.replace(
            self, detections=self.detections[keep], object_ids=self.object_ids[keep]
        )

    def rescored(self, object_id: int, score: float) -> Frame:
        """This frame with ``object_id``'s detection scoring ``score``."""
        scores = torch.where(self.object_ids == object_id, score, self.detections.scores)
        return dataclasses.replace(self, detections=self.detections.replace(scores=scores))


@dataclass(frozen=True)
class Scene:
    frames: list[Frame]
    lifetimes: np.ndarray  # (K, 2) first and last frame of each object

    def live_or_recently_lost(self, frame: int, max_lost: int) -> int:
        """Objects visible at ``frame`` or last seen at most ``max_lost`` frames before."""
        first, last = self.lifetimes.T
        return int(((first <= frame) & (frame <= last + max_lost)).sum())


def make_scene(
    *,
    num_frames: int = 60,
    num_objects: int = 8,
    num_labels: int = 1,
    crossing: bool = True,
    crossing_at_frame: bool = True,
    lifespan: tuple[int, int] | None = None,
    box_noise: float = 0.0,
    miss_rate: float = 0.0,
    false_positives: int = 0,
    embedding_dim: int = 64,
    embedding_norm: float = 4.0,
    embedding_noise: float = 0.05,
    seed: int = 0,
) -> Scene:
    """A synthetic video of a 640x480 image: boxes of fixed size moving on straight lines at
    constant velocity, each with a label and a fixed random embedding direction.

    Objects 0 and 1 (when ``crossing``) have label 0, live the whole video and cross halfway
    along one row, 24 pixels apart: at a frame where their boxes overlap by IoU 2/3 when
    ``crossing_at_frame``, else passing each other between two frames. The others have random
    labels, sizes, paths inside the image, and lifespans (``lifespan`` frames, else the whole
    video). Detections score in [0.8, 1); a visible object is missed with chance
    ``miss_rate``; ``false_positives`` random boxes a frame score in [0.15, 0.45).
    Embeddings are ``embedding_norm`` long: association heads learn a large scale, and
    bi-softmax similarity needs one (unit vectors give nearly flat softmaxes).
    """
    rng = np.random.default_rng(seed)
    extent = np.array([IMAGE_SIZE[1], IMAGE_SIZE[0]])  # (x, y)
    width = rng.uniform(40, 90, num_objects)
    size = np.stack((width, width * rng.uniform(1.2, 2.0, num_objects)), axis=1)  # (K, 2)
    length = np.full(num_objects, num_frames)
    if lifespan is not None:
        length = np.minimum(rng.integers(*lifespan, size=num_objects, endpoint=True), num_frames)
    first = rng.integers(0, num_frames - length + 1)  # (K,)
    # Slow down where a path would not fit, then start where the whole path stays inside.
    limit = (extent - size) / length[:, None]  # (K, 2)
    velocity = np.clip(rng.uniform(-5, 5, (num_objects, 2)), -limit, limit)
    travel = velocity * (length[:, None] - 1)
    low, high = size / 2 - np.minimum(travel, 0), extent - size / 2 - np.maximum(travel, 0)
    center = rng.uniform(low, high)  # (K, 2) at the first frame
    labels = rng.integers(num_labels, size=num_objects)
    if crossing:
        meet = (num_frames - 1) // 2 + (0.0 if crossing_at_frame else 0.5)  # same x then
        speed = 220 / max(meet, 1.0)
        first[:2], length[:2], labels[:2], size[:2] = 0, num_frames, 0, (60.0, 120.0)
        center[:2], velocity[:2] = [[100.0, 240.0], [540.0, 264.0]], [[speed, 0], [-speed, 0]]
    directions = rng.standard_normal((num_objects, embedding_dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)  # (K, D)

    frames = []
    for t in range(num_frames):
        centers = center + velocity * (t - first)[:, None]  # (K, 2)
        boxes = np.concatenate((centers - size / 2, centers + size / 2), axis=1)  # (K, 4)
        visible = np.flatnonzero((first <= t) & (t < first + length))
        hit = visible[rng.random(len(visible)) >= miss_rate]
        fp = false_positives  # random boxes and embeddings, scoring low, of object -1
        fp_corners = rng.uniform(0, 560, (fp, 2))
        fp_boxes = np.concatenate((fp_corners, fp_corners + rng.uniform(40, 80, (fp, 2))), 1)
        hit_boxes = boxes[hit] + box_noise * rng.standard_normal((len(hit), 4))
        fp_directions = rng.standard_normal((fp, embedding_dim)) / embedding_dim**0.5
        noisy = np.concatenate((directions[hit], fp_directions))
        noisy += embedding_noise * rng.standard_normal(noisy.shape) / embedding_dim**0.5
        embeddings = embedding_norm * noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
        scores = np.concatenate((rng.uniform(0.8, 1.0, len(hit)), rng.uniform(0.15, 0.45, fp)))
        det_labels = np.concatenate((labels[hit], rng.integers(num_labels, size=fp)))
        order = rng.permutation(len(scores))
        detections = Instances(
            IMAGE_SIZE,
            boxes=_float(np.concatenate((hit_boxes, fp_boxes))[order]),
            scores=_float(scores[order]),
            labels=torch.as_tensor(det_labels[order]),
            embeddings=_float(embeddings[order]),
        )
        object_ids = torch.as_tensor(np.concatenate((hit, np.full(fp, -1)))[order])
        frames.append(
            Frame(torch.as_tensor(visible), _float(boxes[visible]), detections, object_ids)
        )
    return Scene(frames=frames, lifetimes=np.stack((first, first + length - 1), axis=1))


def _float(array: np.ndarray) -> Tensor:
    return torch.as_tensor(array, dtype=torch.float32)


def twin_frames(num_frames: int, seed: int = 0) -> list[Instances]:
    """Two objects of labels 0 and 1 with the same box and the same embedding in every frame
    (up to noise), in random order: only their labels tell them apart."""
    generator = torch.Generator().manual_seed(seed)
    noisy = torch.randn(64, generator=generator) + 0.01 * torch.randn(
        num_frames, 2, 64, generator=generator
    )  # (T, 2, 64)
    return [
        Instances(
            IMAGE_SIZE,
            boxes=torch.tensor([[100.0 + 3 * t, 100.0, 160.0 + 3 * t, 220.0]]).repeat(2, 1),
            scores=torch.full((2,), 0.9),
            labels=torch.randperm(2, generator=generator),
            embeddings=4 * noisy[t] / noisy[t].norm(dim=1, keepdim=True),
        )
        for t in range(num_frames)
    ]


def crossing_overlap(scene: Scene) -> float:
    """Highest IoU of the crossing pair's true boxes over the video."""
    a, b = CROSSING_PAIR
    return max(
        float(box_iou(f.gt_boxes[f.gt_ids == a], f.gt_boxes[f.gt_ids == b])) for f in scene.frames
    )


def max_overlap(scene: Scene) -> float:
    """Highest IoU between two true boxes of one frame (NMS above it would merge objects)."""
    ious = [
        box_iou(f.gt_boxes, f.gt_boxes).fill_diagonal_(0.0).max()
        for f in scene.frames
        if len(f.gt_boxes) > 1
    ]
    return float(max(ious, default=0.0))


def median_calls_per_update(tracker: Tracker, frames: Sequence[Frame], warmup: int = 3) -> float:
    """Median number of Python and C function calls one update makes, after ``warmup`` frames.

    A count, not a time: the same on any machine however busy, and it grows with the number of
    tracks exactly when the update loops over tracks in Python, which is what makes an update
    slow.
    """
    counts = []
    for frame in frames:
        calls = 0

        def count(_frame, event: str, _arg) -> None:
            nonlocal calls
            calls += event in ("call", "c_call")

        sys.setprofile(count)
        try:
            tracker.update(frame.detections)
        finally:
            sys.setprofile(None)
        counts.append(calls)
    return float(np.median(counts[warmup:]))


def run(tracker: Tracker, frames: Sequence[Frame]) -> list[Instances]:
    """The tracker's output for each frame."""
    return [tracker.update(frame.detections) for frame in frames]


def objects_of(output: Instances, frame: Frame) -> Tensor:
    """(R,) object id of each reported detection (-1 for a false positive), found by its box
    and label among the frame's detections (trackers report detections as given)."""
    detections = frame.detections
    if len(output) == 0:
        return frame.object_ids[:0]
    same = (output.boxes[:, None] == detections.boxes[None]).all(dim=-1)  # (R, N)
    same &= output.labels[:, None] == detections.labels[None]
    assert bool(same.any(dim=1).all()), "the tracker reported a box it was not given"
    return frame.object_ids[same.int().argmax(dim=1)]


def track_ids_by_object(outputs: Sequence[Instances], frames: Sequence[Frame]) -> dict:
    """Object id -> the track ids it was reported with, frame after frame."""
    history: dict[int, list[int]] = {}
    for output, frame in zip(outputs, frames, strict=True):
        objects = objects_of(output, frame).tolist()
        for obj, track in zip(objects, output.track_ids.tolist(), strict=True):
            history.setdefault(obj, []).append(track)
    return history


def assert_one_id_per_object(history: dict[int, list[int]]) -> None:
    """Each object kept one track id, and no two objects shared one (false positives, object
    -1, are left out)."""
    history = {obj: ids for obj, ids in history.items() if obj >= 0}
    for obj, ids in history.items():
        assert len(set(ids)) == 1, f"object {obj} was tracked as {sorted(set(ids))}"
    firsts = [ids[0] for ids in history.values()]
    assert len(set(firsts)) == len(firsts), "two objects share a track id"


def assert_bounded_state(tracker: Tracker, scene: Scene, max_lost: int) -> None:
    """Runs ``scene``; after every frame the tracker holds exactly the tracks it reported in
    the last ``max_lost + 1`` frames, no more than the objects visible or lost within
    ``max_lost`` frames; new ids continue 1, 2, ... and a forgotten id never comes back."""
    last_seen: dict[int, int] = {}  # track id -> last frame reported
    for t, frame in enumerate(scene.frames):
        output = tracker.update(frame.detections)
        assert output.track_ids.dtype == torch.int64
        ids = set(output.track_ids.tolist())
        new = sorted(ids - set(last_seen))
        assert new == list(range(len(last_seen) + 1, len(last_seen) + 1 + len(new))), t
        assert all(t - last_seen[track] <= max_lost + 1 for track in ids - set(new)), t
        last_seen.update(dict.fromkeys(ids, t))
        assert tracker.num_tracks == sum(t - s <= max_lost for s in last_seen.values()), t
        assert tracker.num_tracks <= scene.live_or_recently_lost(t, max_lost), t


def scene_idf1(outputs: Sequence[Instances], frames: Sequence[Frame]) -> float:
    """IDF1 of a tracker's outputs against the scene's true boxes."""
    return idf1(
        [frame.gt_ids for frame in frames],
        [frame.gt_boxes for frame in frames],
        [output.track_ids for output in outputs],
        [output.boxes for output in outputs],
    )


def _contiguous(ids_per_frame: Sequence[Tensor]) -> tuple[list[np.ndarray], int]:
    # TrackEval's metrics index their count arrays with the ids: they must be 0..K-1.
    unique = sorted({i for ids in ids_per_frame for i in ids.tolist()})
    index = {identity: position for position, identity in enumerate(unique)}
    relabelled = [
        np.array([index[i] for i in ids.tolist()], dtype=np.int64) for ids in ids_per_frame
    ]
    return relabelled, len(unique)


def idf1(
    gt_ids_per_frame: Sequence[Tensor],
    gt_boxes_per_frame: Sequence[Tensor],
    pred_ids_per_frame: Sequence[Tensor],
    pred_boxes_per_frame: Sequence[Tensor],
) -> float:
    """IDF1 of one sequence by TrackEval's ``Identity`` metric (a match needs IoU >= 0.5),
    from per-frame (G,) true ids, (G, 4) xyxy true boxes, (P,) track ids and (P, 4) boxes."""
    trackeval = pytest.importorskip(
        "trackeval", reason="IDF1 is computed by TrackEval (pip install trackeval)"
    )
    for t, ids in enumerate(pred_ids_per_frame):
        assert len(set(ids.tolist())) == len(ids), f"frame {t} reports a track id twice"
    gt_ids, num_gt_ids = _contiguous(gt_ids_per_frame)
    tracker_ids, num_tracker_ids = _contiguous(pred_ids_per_frame)
    data = {
        "num_timesteps": len(gt_ids),
        "num_gt_ids": num_gt_ids,
        "num_tracker_ids": num_tracker_ids,
        "num_gt_dets": sum(len(ids) for ids in gt_ids),
        "num_tracker_dets": sum(len(ids) for ids in tracker_ids),
        "gt_ids": gt_ids,
        "tracker_ids": tracker_ids,
        "similarity_scores": [
            box_iou(gt.reshape(-1, 4).float(), pred.reshape(-1, 4).float()).numpy()
            for gt, pred in zip(gt_boxes_per_frame, pred_boxes_per_frame, strict=True)
        ],
    }
    metric = trackeval.metrics.Identity({"THRESHOLD": 0.5, "PRINT_CONFIG": False})
    return float(metric.eval_sequence(data)["IDF1"])
