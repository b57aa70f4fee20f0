from __future__ import annotations

import pytest
import torch

from unipercept.structures import Instances, RLEMasks


def make(num: int = 4, size: tuple[int, int] = (12, 16), rle: bool = False) -> Instances:
    generator = torch.Generator().manual_seed(num)
    corner = torch.rand(num, 2, generator=generator) * 8
    masks = torch.rand(num, *size, generator=generator) > 0.5
    return Instances(
        size,
        boxes=torch.cat((corner, corner + 4), dim=1),
        scores=torch.linspace(0.9, 0.1, num),
        labels=torch.arange(num) % 3,
        masks=RLEMasks.from_dense(masks) if rle else masks,
        track_ids=torch.arange(num) + 10,
        embeddings=torch.rand(num, 8, generator=generator),
    )


@pytest.mark.parametrize("rle", [False, True], ids=["dense", "rle"])
def test_indexing_keeps_fields_aligned(rle):
    inst = make(rle=rle)
    dense = inst.masks.decode() if rle else inst.masks
    for index in (
        torch.tensor([True, False, True, True]),
        torch.tensor([3, 0]),
        slice(1, 3),
        [2, 1],
    ):
        sub = inst[index]
        expected_ids = inst.track_ids[
            torch.as_tensor(index) if not isinstance(index, slice) else index
        ]
        assert torch.equal(sub.track_ids, expected_ids)
        assert torch.equal(
            sub.boxes, inst.boxes[torch.as_tensor(index) if not isinstance(index, slice) else index]
        )
        sub_masks = sub.masks.decode() if rle else sub.masks
        assert torch.equal(
            sub_masks, dense[torch.as_tensor(index) if not isinstance(index, slice) else index]
        )
    assert len(inst[-1]) == 1 and inst[-1].track_ids.item() == 13
    assert inst[0].track_ids.item() == 10
    with pytest.raises(IndexError, match="index 4 out of range"):
        inst[4]
    with pytest.raises(IndexError, match="bool index"):
        inst[torch.tensor([True, False])]


def test_len_and_empty():
    assert len(make()) == 4
    empty = Instances((5, 5))
    assert len(empty) == 0 and empty.fields() == {}
    none = make()[torch.zeros(4, dtype=torch.bool)]
    assert len(none) == 0 and none.boxes.shape == (0, 4)


@pytest.mark.parametrize("rle", [False, True], ids=["dense", "rle"])
def test_cat(rle):
    a, b = make(3, rle=rle), make(2, rle=rle)
    both = Instances.cat([a, b])
    assert len(both) == 5
    assert torch.equal(both.track_ids, torch.cat([a.track_ids, b.track_ids]))
    with pytest.raises(ValueError, match="has fields"):
        Instances.cat([a, a.replace(embeddings=None)])
    with pytest.raises(ValueError, match="has image_size"):
        Instances.cat([a, make(2, size=(3, 3), rle=rle)])
    with pytest.raises(ValueError, match="at least one"):
        Instances.cat([])


def test_to_and_replace():
    inst = make()
    moved = inst.to("cpu")
    assert moved.boxes.device.type == "cpu" and torch.equal(moved.boxes, inst.boxes)
    replaced = inst.replace(scores=torch.ones(4))
    assert torch.equal(replaced.scores, torch.ones(4)) and torch.equal(
        inst.scores[0:1], torch.tensor([0.9])
    )
    with pytest.raises(ValueError, match="different lengths"):
        inst.replace(scores=torch.ones(3))
    with pytest.raises(AttributeError):
        inst.scores = torch.ones(4)  # frozen


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"boxes": torch.zeros(3, 4), "scores": torch.zeros(2)}, "different lengths"),
        ({"boxes": torch.zeros(3, 5)}, r"boxes must be \(N, 4\) float"),
        ({"boxes": torch.zeros(3, 4, dtype=torch.int64)}, r"boxes must be \(N, 4\) float"),
        ({"labels": torch.zeros(3)}, "labels must be an integer tensor"),
        ({"track_ids": torch.zeros(3, dtype=torch.bool)}, "track_ids must be an integer tensor"),
        ({"scores": torch.zeros(3, 1)}, "scores must have 1 dimensions"),
        ({"masks": torch.zeros(2, 12, 16)}, r"masks must be an \(N, H, W\) bool tensor"),
        ({"masks": torch.zeros(2, 12, 15, dtype=torch.bool)}, r"masks have size \(12, 15\)"),
        ({"scores": [0.5]}, "scores must be a torch.Tensor"),
    ],
)
def test_bad_fields_are_rejected(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Instances((12, 16), **fields)


@pytest.mark.parametrize("size", [(0, 5), (5,), (5.0, 5), "ab"])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="image_size must be"):
        Instances(size)
