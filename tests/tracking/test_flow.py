"""FlowTracker on synthetic textured scenes: squares moving over a textured background.

The frames are 192x256 rather than smaller: DIS (medium preset, on frames halved by the default
flow_scale) needs objects of a few of its 8-pixel patches to measure their motion.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from unipercept.structures import Instances
from unipercept.structures.masks import RLEMasks, mask_iou
from unipercept.tracking.flow import FlowTracker

HEIGHT, WIDTH = 192, 256
SIDE = 48


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 blotchy noise: blocks of 4 pixels, blurred so flow has gradients."""
    blocks = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1)).astype(np.uint8)
    big = np.kron(blocks, np.ones((4, 4), dtype=np.uint8))[:height, :width]
    return cv2.GaussianBlur(big, (5, 5), 1.0)


def _scene(starts, step, num_frames, seed=0):
    """Frames (3, H, W) uint8 and per-frame (K, H, W) true masks of K squares, each with its own
    texture, moving by ``step = (dx, dy)`` pixels per frame over a static textured background."""
    rng = np.random.default_rng(seed)
    background = _texture(rng, HEIGHT, WIDTH)
    textures = [_texture(rng, SIDE, SIDE) for _ in starts]
    frames, masks = [], []
    for t in range(num_frames):
        grey = background.copy()
        frame_masks = torch.zeros((len(starts), HEIGHT, WIDTH), dtype=torch.bool)
        for k, ((x0, y0), texture) in enumerate(zip(starts, textures, strict=True)):
            x, y = x0 + step[0] * t, y0 + step[1] * t
            grey[y : y + SIDE, x : x + SIDE] = texture
            frame_masks[k, y : y + SIDE, x : x + SIDE] = True
        frames.append(torch.from_numpy(np.stack((grey, 255 - grey, grey // 2))))
        masks.append(frame_masks)
    return frames, masks


def _detections(masks: torch.Tensor, scores=None) -> Instances:
    scores = torch.full((len(masks),), 0.9) if scores is None else torch.as_tensor(scores)
    return Instances(
        (HEIGHT, WIDTH),
        scores=scores,
        labels=torch.zeros(len(masks), dtype=torch.int64),
        masks=masks,
    )


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(mask_iou(a[None], b[None])[0, 0])


def test_track_survives_a_missed_detection():
    frames, masks = _scene([(10, 12)], step=(6, 4), num_frames=8)
    # Unwarped, the last mask would overlap the object by IoU 0.67: the flow has to move it.
    assert _iou(masks[3][0], masks[4][0]) < 0.7
    tracker = FlowTracker()
    ids = []
    for t, (frame, true) in enumerate(zip(frames, masks, strict=True)):
        dets = _detections(true[:0] if t == 4 else true)
        out = tracker.update(dets, frame)
        assert len(out) == 1
        ids.append(int(out.track_ids[0]))
        if t == 4:
            # Carried over the gap by the flow: close to where the square really is.
            assert _iou(out.masks[0], true[0]) >= 0.7
            assert float(out.scores[0]) == pytest.approx(0.9)
        else:
            assert torch.equal(out.masks[0], true[0])
    assert ids == [1] * 8


def test_carried_box_is_the_tight_box_of_the_warped_mask():
    frames, masks = _scene([(10, 12)], step=(4, 3), num_frames=2)
    tracker = FlowTracker()
    tracker.update(_detections(masks[0]), frames[0])
    out = tracker.update(_detections(masks[1][:0]), frames[1])
    ys, xs = out.masks[0].nonzero().unbind(1)
    expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert out.boxes[0].tolist() == [float(v) for v in expected]


def test_track_dropped_after_max_unmatched_misses_and_its_id_not_reused():
    frames, masks = _scene([(10, 12)], step=(3, 2), num_frames=7)
    tracker = FlowTracker(max_unmatched=2)
    present = [True, True, False, False, False, True, True]
    reported = []
    for frame, true, seen in zip(frames, masks, present, strict=True):
        out = tracker.update(_detections(true if seen else true[:0]), frame)
        reported.append(out.track_ids.tolist())
    # Carried through two misses, dropped at the third; the object seen again is a new track.
    assert reported == [[1], [1], [1], [1], [], [2], [2]]
    assert tracker.num_tracks == 1


def test_far_apart_objects_get_their_own_ids():
    frames, masks = _scene([(8, 8), (180, 120)], step=(2, 1), num_frames=4)
    tracker = FlowTracker()
    for frame, true in zip(frames, masks, strict=True):
        out = tracker.update(_detections(true), frame)
        assert out.track_ids.tolist() == [1, 2]
        assert torch.equal(out.masks, true)


def test_nms_drops_the_lower_scoring_duplicate_track():
    frames, masks = _scene([(30, 30)], step=(2, 2), num_frames=3)
    shifted = masks[0].roll(1, dims=2)  # the same object detected one pixel off
    tracker = FlowTracker()
    out = tracker.update(_detections(torch.cat((shifted, masks[0])), [0.6, 0.9]), frames[0])
    assert len(out) == 1 and tracker.num_tracks == 1
    assert float(out.scores[0]) == pytest.approx(0.9)
    assert torch.equal(out.masks[0], masks[0][0])
    tracked = int(out.track_ids[0])
    for frame, true in zip(frames[1:], masks[1:], strict=True):
        assert tracker.update(_detections(true), frame).track_ids.tolist() == [tracked]


def test_low_scoring_detections_neither_match_nor_start_tracks():
    frames, masks = _scene([(10, 12)], step=(2, 2), num_frames=2)
    tracker = FlowTracker(score_threshold=0.5)
    assert len(tracker.update(_detections(masks[0], [0.2]), frames[0])) == 0
    assert tracker.update(_detections(masks[1], [0.8]), frames[1]).track_ids.tolist() == [1]


def test_empty_masks_never_start_tracks():
    frames, masks = _scene([(10, 12)], step=(2, 2), num_frames=3)
    tracker = FlowTracker(score_threshold=0.0, iou_threshold=0.0)
    for frame, frame_masks in zip(frames, masks, strict=True):
        empty = torch.zeros_like(frame_masks)
        tracked = tracker.update(_detections(torch.cat((frame_masks, empty)), [0.5, 0.9]), frame)
        assert tracked.track_ids.tolist() == [1]
    assert tracker.num_tracks == 1


def test_rle_masks_are_accepted_and_reset_starts_a_new_video():
    frames, masks = _scene([(10, 12)], step=(2, 2), num_frames=2)
    tracker = FlowTracker()
    dets = _detections(masks[0]).replace(masks=RLEMasks.from_dense(masks[0]))
    out = tracker.update(dets, frames[0])
    assert torch.equal(out.masks, masks[0])
    tracker.reset()
    assert tracker.num_tracks == 0
    assert tracker.update(_detections(masks[1]), frames[1]).track_ids.tolist() == [1]


def test_empty_frames_and_carried_embeddings():
    frames, masks = _scene([(10, 12)], step=(3, 2), num_frames=3)
    tracker = FlowTracker()
    with_embeddings = _detections(masks[0]).replace(embeddings=torch.tensor([[1.0, 2.0]]))
    assert len(tracker.update(with_embeddings[:0], frames[0])) == 0
    tracker.update(with_embeddings, frames[1])
    out = tracker.update(with_embeddings[:0], frames[2])  # missed: carried with its embedding
    assert out.track_ids.tolist() == [1] and out.embeddings.tolist() == [[1.0, 2.0]]
    assert out.labels.tolist() == [0]
    with pytest.raises(ValueError, match="fields"):
        tracker.update(_detections(masks[2]), frames[2])  # the embeddings went missing


def test_bad_inputs_raise():
    frames, masks = _scene([(10, 12)], step=(2, 2), num_frames=1)
    tracker = FlowTracker()
    with pytest.raises(ValueError, match="image"):
        tracker.update(_detections(masks[0]))
    with pytest.raises(ValueError, match="masks"):
        tracker.update(_detections(masks[0]).replace(masks=None), frames[0])
    small = Instances((48, 64), scores=torch.ones(1), masks=torch.ones(1, 48, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="masks"):
        tracker.update(small, frames[0])
    with pytest.raises(ValueError, match="image"):
        tracker.update(_detections(masks[0]), frames[0].float())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"iou_threshold": 1.5}, "iou_threshold"),
        ({"max_unmatched": -1}, "max_unmatched"),
        ({"max_unmatched": 2.0}, "max_unmatched"),
        ({"nms_iou": -0.1}, "nms_iou"),
        ({"score_threshold": float("nan")}, "score_threshold"),
        ({"flow_scale": 0.0}, "flow_scale"),
    ],
)
def test_constructor_validates_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FlowTracker(**kwargs)
