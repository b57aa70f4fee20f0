from __future__ import annotations

import pytest
import torch

from unipercept.structures import ImageBatch


def test_pads_to_multiple_of_32_with_valid_mask():
    images = [torch.rand(3, 50, 70), torch.rand(3, 64, 30), torch.rand(3, 1, 1)]
    batch = ImageBatch.from_images(
        images, pad_value=-1.0, original_sizes=[(100, 140), (64, 30), (2, 2)]
    )
    assert batch.tensor.shape == (3, 3, 64, 96)
    assert batch.image_sizes == ((50, 70), (64, 30), (1, 1))
    assert batch.original_sizes == ((100, 140), (64, 30), (2, 2))
    for index, image in enumerate(images):
        h, w = image.shape[1:]
        assert torch.equal(batch.image(index), image)
        assert int(batch.valid[index].sum()) == h * w
        assert bool(batch.valid[index, :h, :w].all())
        padding = batch.tensor[index][:, ~batch.valid[index]]
        assert bool((padding == -1.0).all())
    assert len(batch) == 3 and batch.to("cpu").device.type == "cpu"


@pytest.mark.parametrize(
    ("divisibility", "expected"), [(0, (50, 70)), (1, (50, 70)), (64, (64, 128))]
)
def test_size_divisibility(divisibility, expected):
    batch = ImageBatch.from_images([torch.rand(3, 50, 70)], size_divisibility=divisibility)
    assert tuple(batch.tensor.shape[2:]) == expected


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([], "at least one image"),
        ([torch.rand(1, 5, 5)], r"images\[0\] must be a \(3, H, W\) tensor"),
        (
            [torch.rand(3, 5, 5), torch.zeros(3, 5, 5, dtype=torch.uint8)],
            r"images\[1\] must be floating",
        ),
        ([torch.rand(3, 0, 5)], r"images\[0\] is empty"),
    ],
)
def test_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        ImageBatch.from_images(images)


def test_inconsistent_fields_are_rejected():
    tensor = torch.zeros(1, 3, 32, 32)
    with pytest.raises(ValueError, match="valid must be a bool tensor"):
        ImageBatch(tensor, torch.ones(1, 32, 31, dtype=torch.bool), ((32, 32),), ((32, 32),))
    with pytest.raises(ValueError, match="original_sizes has 2 entries for a batch of 1"):
        ImageBatch(tensor, torch.ones(1, 32, 32, dtype=torch.bool), ((32, 32),), ((1, 1), (2, 2)))
    with pytest.raises(ValueError, match=r"image_sizes\[0\] = \(40, 32\) does not fit"):
        ImageBatch(tensor, torch.ones(1, 32, 32, dtype=torch.bool), ((40, 32),), ((40, 32),))
