from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unipercept.data.sampling import (
    jitter_box,
    pseudo_video,
    sample_clip_indices,
    sample_template_pair,
)
from unipercept.data.types import Frame, Sample, empty_instances
from unipercept.structures import Instances, boxes_to_masks


@pytest.mark.parametrize(
    ("frames", "length", "window"), [(30, 3, 5), (30, 2, 30), (2, 4, 5), (1, 3, 3)]
)
def test_clip_indices_stay_in_a_window_and_in_order(frames, length, window):
    for seed in range(20):
        indices = sample_clip_indices(frames, length, window, torch.Generator().manual_seed(seed))
        assert len(indices) == length and indices == sorted(indices)
        assert indices[0] >= 0 and indices[-1] < frames and indices[-1] - indices[0] < window
        if frames >= length and window >= length:
            assert len(set(indices)) == length


def video() -> Sample:
    """Object 1 visible in frames 0-5, object 2 only in frames 3-4; frame 2 unannotated."""
    frames = []
    for index in range(6):
        boxes, ids = [[10.0 + index, 10.0, 30.0 + index, 30.0]], [1]
        if index in (3, 4):
            boxes.append([50.0, 50.0, 60.0, 60.0])
            ids.append(2)
        instances = Instances(
            (80, 100),
            boxes=torch.tensor(boxes),
            labels=torch.zeros(len(ids), dtype=torch.int64),
            track_ids=torch.tensor(ids),
        )
        if index == 2:
            frames.append(Frame(Path(f"{index}.jpg"), empty_instances((80, 100)), annotated=False))
        else:
            frames.append(Frame(Path(f"{index}.jpg"), instances))
    return Sample("synthetic", "v", tuple(frames))


def test_template_pairs_show_the_object_in_both_frames_within_the_gap():
    sample = video()
    seen_tracks = set()
    for seed in range(40):
        template, search, track = sample_template_pair(
            sample, 1, torch.Generator().manual_seed(seed)
        )
        seen_tracks.add(track)
        assert abs(template - search) <= 1 and 2 not in (template, search)
        for index in (template, search):
            assert track in sample.frames[index].instances.track_ids.tolist()
    assert seen_tracks == {1, 2}
    empty = Sample("synthetic", "e", (Frame(Path("x.jpg"), empty_instances((8, 8))),))
    with pytest.raises(ValueError, match="has no visible object"):
        sample_template_pair(empty, 3, torch.Generator())


def test_jittered_boxes_stay_near_and_inside():
    box = torch.tensor([40.0, 30.0, 60.0, 70.0])
    for seed in range(50):
        out = jitter_box(box, (80, 100), torch.Generator().manual_seed(seed))
        assert out[0] >= 0 and out[1] >= 0 and out[2] <= 100 and out[3] <= 80
        assert out[2] - out[0] >= 1 and out[3] - out[1] >= 1
        centre_shift = ((out[:2] + out[2:]) / 2 - (box[:2] + box[2:]) / 2).abs().max()
        assert centre_shift <= 0.25 * (20 * 40) ** 0.5 + 1e-4


def test_pseudo_video_moves_objects_and_keeps_identities():
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8, generator=generator)
    boxes = torch.tensor([[30.0, 20.0, 60.0, 44.0]])
    target = Instances(
        (64, 96),
        boxes=boxes,
        labels=torch.tensor([2]),
        masks=boxes_to_masks(boxes, (64, 96)),
        track_ids=torch.tensor([5]),
    )
    clip = pseudo_video(
        image, target, 4, generator, expressions=("a box",), expression_targets=((5,),)
    )
    assert len(clip.images) == 4 and all(i.shape == (3, 64, 96) for i in clip.images)
    assert all(t.track_ids.tolist() == [5] for t in clip.targets)  # central object survives
    positions = {tuple(t.boxes[0].round().tolist()) for t in clip.targets}
    assert len(positions) > 1
    assert clip.expressions == ("a box",)
