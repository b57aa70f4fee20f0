from __future__ import annotations

import pytest
import torch

from unipercept.data.transforms import (
    Clip,
    ColorJitter,
    Compose,
    HorizontalFlip,
    LargeScaleJitter,
    RandomCrop,
    ResizeShortestEdge,
    detr_train_transform,
    swap_left_right,
)
from unipercept.structures import Instances, RLEMasks, boxes_to_masks, masks_to_boxes


def scene(frames: int = 1) -> Clip:
    """A square left of a circle-ish blob, described by two expressions."""
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 255, (3, 60, 100), dtype=torch.uint8, generator=generator)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [60.0, 15.0, 90.0, 45.0]])
    target = Instances(
        (60, 100),
        boxes=boxes,
        labels=torch.tensor([0, 1]),
        masks=boxes_to_masks(boxes, (60, 100)),
        track_ids=torch.tensor([7, 8]),
    )
    return Clip(
        images=(image,) * frames,
        targets=(target,) * frames,
        expressions=("the square left of the circle", "the Rightmost object"),
        expression_targets=((7,), (8,)),
    )


def centre_x(target: Instances, track: int) -> float:
    box = target.boxes[target.track_ids == track][0]
    return float(box[0] + box[2]) / 2


def test_flip_keeps_expressions_true():
    clip = HorizontalFlip(probability=1.0)(scene(), torch.Generator().manual_seed(0))
    assert clip.expressions == ("the square right of the circle", "the Leftmost object")
    target = clip.targets[0]
    # The square (7) is now right of the circle (8), as the flipped sentence says.
    assert centre_x(target, 7) > centre_x(target, 8)
    torch.testing.assert_close(target.boxes[0], torch.tensor([70.0, 20.0, 90.0, 40.0]))
    torch.testing.assert_close(masks_to_boxes(target.masks), target.boxes)
    assert clip.expression_targets == ((7,), (8,))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("left", "right"),
        ("Right side", "Left side"),
        ("LEFT", "RIGHT"),
        ("leftmost cat", "rightmost cat"),
        ("bright lefty", "bright lefty"),
        ("left and right", "right and left"),
    ],
)
def test_swap_left_right(text, expected):
    assert swap_left_right(text) == expected


def test_resize_scales_boxes_and_masks_together():
    clip = ResizeShortestEdge(short_sizes=(30,), max_size=1000)(scene(), torch.Generator())
    target = clip.targets[0]
    assert clip.images[0].shape == (3, 30, 50) and target.image_size == (30, 50)
    torch.testing.assert_close(target.boxes[0], torch.tensor([5.0, 10.0, 15.0, 20.0]))
    # Nearest-neighbour masks land within half a pixel of the exactly scaled boxes.
    torch.testing.assert_close(masks_to_boxes(target.masks), target.boxes, atol=0.5, rtol=0)
    capped = ResizeShortestEdge(short_sizes=(60,), max_size=80)(scene(), torch.Generator())
    assert capped.images[0].shape[1:] == (48, 80)


def test_random_crop_is_the_same_for_every_frame_and_drops_what_leaves():
    generator = torch.Generator().manual_seed(3)
    clip = RandomCrop(min_fraction=0.3, probability=1.0)(scene(frames=3), generator)
    assert all(torch.equal(clip.images[0], image) for image in clip.images)
    for target in clip.targets:
        assert target.image_size == tuple(clip.images[0].shape[1:])
        if len(target):
            torch.testing.assert_close(masks_to_boxes(target.masks), target.boxes)
    again = RandomCrop(min_fraction=0.3, probability=1.0)(
        scene(frames=3), torch.Generator().manual_seed(3)
    )
    assert torch.equal(again.images[0], clip.images[0])
    # A crop well away from the objects removes both.
    window = RandomCrop(min_fraction=1.0, probability=1.0)
    assert len(window(scene(), torch.Generator()).targets[0]) == 2


def test_color_jitter_and_large_scale_jitter_are_clip_consistent():
    clip = scene(frames=2)
    jittered = ColorJitter()(clip, torch.Generator().manual_seed(0))
    assert torch.equal(jittered.images[0], jittered.images[1])
    assert not torch.equal(jittered.images[0], clip.images[0])
    lsj = LargeScaleJitter(output_size=64)(clip, torch.Generator().manual_seed(1))
    assert all(image.shape == (3, 64, 64) for image in lsj.images)
    for target in lsj.targets:
        assert target.image_size == (64, 64) and target.masks.shape[1:] == (64, 64)
        if len(target):
            torch.testing.assert_close(masks_to_boxes(target.masks), target.boxes, atol=1.0, rtol=0)


def test_compose_is_deterministic_by_seed():
    chain = detr_train_transform(max_size=120, short_sizes=(40, 48))
    first = chain(scene(frames=2), torch.Generator().manual_seed(5))
    second = chain(scene(frames=2), torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first.images, second.images, strict=True))
    assert torch.equal(first.targets[0].boxes, second.targets[0].boxes)
    assert isinstance(chain, Compose)


def test_clip_validation():
    good = scene()
    with pytest.raises(ValueError, match="one target per image"):
        Clip(images=good.images, targets=())
    with pytest.raises(ValueError, match=r"images\[0\] must be \(3, H, W\) uint8"):
        Clip(images=(good.images[0].float(),), targets=good.targets)
    with pytest.raises(ValueError, match="has image_size"):
        Clip(images=(good.images[0][:, :10],), targets=good.targets)
    rle = good.targets[0].replace(masks=RLEMasks.from_dense(good.targets[0].masks))
    with pytest.raises(ValueError, match="has RLE masks"):
        Clip(images=good.images, targets=(rle,))
    with pytest.raises(ValueError, match="1 expression_targets for 2 expressions"):
        Clip(
            images=good.images,
            targets=good.targets,
            expressions=good.expressions,
            expression_targets=((7,),),
        )
