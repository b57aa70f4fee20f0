"""UNINEXT's image preparation against the fixture's recorded inputs."""

from __future__ import annotations

import torch

from unipercept.modeling.uninext.preprocess import UninextPreprocessor, shortest_edge_size


def test_shortest_edge_rounds_half_up_and_caps_the_long_side() -> None:
    assert shortest_edge_size(192, 256, 96, 1333) == (96, 128)
    assert shortest_edge_size(200, 280, 80, 1333) == (80, 112)
    # detectron2: 480 short edge on a 1080x1920 frame; 800 on a very long image is capped.
    assert shortest_edge_size(1080, 1920, 480, 1333) == (480, 853)
    assert shortest_edge_size(100, 1000, 800, 1333) == (133, 1333)


def test_batch_equals_uninexts_resized_normalised_padded_input(uninext_case) -> None:
    case = uninext_case("det")
    originals = [case[f"input.orig_image{i}_uint8_hwc"].permute(2, 0, 1) for i in range(2)]
    resized = []
    for index, (short, image) in enumerate(zip((96, 80), originals, strict=True)):
        prep = UninextPreprocessor(short_size=short, max_size=1333)
        out = prep.resize(image)
        assert torch.equal(out.permute(1, 2, 0), case[f"input.resized_image{index}_uint8_hwc"])
        resized.append(out)
    # One preprocessor per image size above; the batch pads both to the largest.
    first = UninextPreprocessor(short_size=96)([originals[0]])
    second = UninextPreprocessor(short_size=80)([originals[1]])
    torch.testing.assert_close(first.tensor[0], case["input.images"][0], rtol=0, atol=1e-6)
    images = case["input.images"][1]
    assert torch.all(images[:, 80:] == 0) and torch.all(images[:, :, 112:] == 0)
    torch.testing.assert_close(second.tensor[0], images[:, :80, :112], rtol=0, atol=1e-6)
    assert first.original_sizes == ((192, 256),) and second.image_sizes == ((80, 112),)
