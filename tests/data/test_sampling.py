from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unipercept.data.sampling import (
    invisible_frames,
    jitter_box,
    pseudo_video,
    sample_clip_indices,
    sample_template_pair,
    zoom_crop,
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


def _still(ignore_first: bool = False) -> tuple[torch.Tensor, Instances]:
    image = torch.randint(0, 255, (3, 80, 120), dtype=torch.uint8, generator=torch.Generator())
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [70.0, 40.0, 110.0, 75.0]])
    return image, Instances(
        (80, 120),
        boxes=boxes,
        labels=torch.tensor([0, 1]),
        masks=boxes_to_masks(boxes, (80, 120)),
        track_ids=torch.tensor([1, 2]),
    )


def test_zoom_crops_keep_or_leave_out_the_target_as_asked():
    image, target = _still()
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        kept = zoom_crop(image, target, 1, generator, min_fraction=0.5)
        assert kept is not None and kept[0].shape == (3, 80, 120)
        assert 1 in kept[1].track_ids.tolist()
        gone = zoom_crop(image, target, 1, generator, min_fraction=0.5, absent=True)
        if gone is not None:
            assert 1 not in gone[1].track_ids.tolist() and gone[0].shape == (3, 80, 120)
    # A target filling the frame cannot be cropped out.
    whole = Instances(
        (80, 120),
        boxes=torch.tensor([[0.0, 0.0, 120.0, 80.0]]),
        labels=torch.tensor([0]),
        track_ids=torch.tensor([3]),
    )
    assert zoom_crop(image, whole, 3, torch.Generator(), absent=True) is None
    with pytest.raises(ValueError, match="object 9 is not in the frame"):
        zoom_crop(image, target, 9, torch.Generator())


def test_template_pairs_never_point_at_crowd_regions():
    _, target = _still()
    frame = Frame(Path("x.jpg"), target, ignore=torch.tensor([True, False]))
    sample = Sample("synthetic", "s", (frame,))
    tracks = {
        sample_template_pair(sample, 3, torch.Generator().manual_seed(s))[2] for s in range(20)
    }
    assert tracks == {2}


def test_invisible_frames_are_annotated_frames_without_the_object_near_the_template():
    sample = video()  # object 2 only in frames 3-4; frame 2 unannotated
    assert invisible_frames(sample, 2, near=3, max_gap=3) == [0, 1, 5]
    assert invisible_frames(sample, 2, near=3, max_gap=1) == []
    assert invisible_frames(sample, 1, near=0, max_gap=5) == []
