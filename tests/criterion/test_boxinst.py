from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

from unipercept.criterion.boxinst import (
    box_projection_loss,
    color_similarity,
    pairwise_color_loss,
    rgb_to_lab,
)


def offsets(kernel_size: int = 3, dilation: int = 2) -> list[tuple[int, int]]:
    """Neighbour offsets (dy, dx) in the documented (row-major, centre left out) order."""
    steps = [dilation * (i - kernel_size // 2) for i in range(kernel_size)]
    return [(dy, dx) for dy in steps for dx in steps if (dy, dx) != (0, 0)]


OFFSETS = offsets()


def test_projection_loss_matches_hand_computation():
    probabilities = torch.tensor([[[0.2, 0.9, 0.5], [0.1, 0.3, 0.7]]])
    box = torch.tensor([[[0, 1, 1], [0, 1, 1]]])
    # x axis: max over rows p = (0.2, 0.9, 0.7), t = (0, 1, 1): 2 * 1.6 / (1.34 + 2).
    # y axis: max over columns p = (0.9, 0.7), t = (1, 1): 2 * 1.6 / (1.30 + 2).
    expected = (1 - 3.2 / (3.34 + 1e-5)) + (1 - 3.2 / (3.30 + 1e-5))
    loss = box_projection_loss(torch.logit(probabilities), box, 2.0)
    assert float(loss) == pytest.approx(expected / 2, rel=1e-5)


def test_projection_loss_sums_masks_and_backpropagates():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 7, generator=generator, requires_grad=True)
    boxes = torch.zeros(3, 6, 7)
    boxes[0, 1:4, 2:6] = boxes[1, 0:6, 0:2] = boxes[2, 3:5, 3:4] = 1
    total = box_projection_loss(logits, boxes, 1.0)
    parts = sum(box_projection_loss(logits[i : i + 1], boxes[i : i + 1], 1.0) for i in range(3))
    assert torch.allclose(total, parts)
    total.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_projection_loss_is_small_for_a_box_shaped_prediction():
    boxes = torch.zeros(1, 8, 8)
    boxes[0, 2:6, 1:5] = 1
    assert float(box_projection_loss(torch.where(boxes > 0, 15.0, -15.0), boxes, 1.0)) < 1e-4


def test_lab_matches_skimage():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 5, 6, generator=generator, dtype=torch.float64)
    images[0, :, 0, :3] = torch.tensor([[0.0, 1.0, 0.01]]).T  # black, white and a dark colour
    expected = np.stack([rgb2lab(image.permute(1, 2, 0).numpy()) for image in images])
    lab = rgb_to_lab(images.float()).permute(0, 2, 3, 1).double().numpy()
    np.testing.assert_allclose(lab, expected, atol=1e-3)


def lab_of(colour: tuple[float, float, float]) -> np.ndarray:
    return rgb2lab(np.array([[colour]], dtype=np.float64))[0, 0]


def test_similarity_of_a_hand_made_image():
    grey, close, far = (0.5, 0.5, 0.5), (0.52, 0.5, 0.49), (0.1, 0.6, 0.9)
    image = torch.tensor(np.full((3, 3, 3), grey)).permute(2, 0, 1)[None].float()
    image[0, :, 0, 2] = torch.tensor(close)
    image[0, :, 2, 0] = torch.tensor(far)
    similarity = color_similarity(image)
    assert similarity.shape == (1, 8, 3, 3)

    def expected(a, b):
        return math.exp(-np.linalg.norm(lab_of(a) - lab_of(b)) / 2)

    # Only the corners of a 3 x 3 image have neighbours (2 away) inside it.
    top_left = similarity[0, :, 0, 0]
    wanted = [0.0] * 8
    wanted[OFFSETS.index((0, 2))] = expected(grey, close)
    wanted[OFFSETS.index((2, 0))] = expected(grey, far)
    wanted[OFFSETS.index((2, 2))] = 1.0
    assert top_left.tolist() == pytest.approx(wanted, abs=1e-4)
    assert 0.05 < wanted[OFFSETS.index((0, 2))] < 0.95  # a meaningful, non-trivial case
    assert similarity[0, :, 1, 1].abs().sum() == 0  # the centre's neighbours are all outside
    assert similarity[0, OFFSETS.index((-2, 0)), 2, 2].item() == pytest.approx(
        expected(grey, close), abs=1e-4
    )


def test_similarity_is_zero_at_invalid_pixels():
    images = torch.full((1, 3, 5, 5), 0.5)
    valid = torch.ones(1, 5, 5, dtype=torch.bool)
    valid[0, :, 4] = False
    similarity = color_similarity(images, valid)
    inside = color_similarity(images)
    assert similarity[0, :, :, 4].abs().sum() == 0  # invalid centre
    assert similarity[0, OFFSETS.index((0, 2)), :, 2].abs().sum() == 0  # invalid neighbour
    assert torch.equal(similarity[0, :, :, :2], inside[0, :, :, :2])


def reference_pairwise(logits, similarity, boxes, threshold, kernel_size=3, dilation=2):
    """The pairwise loss by a direct loop over pixels and neighbours, in float64."""
    masks, height, width = logits.shape
    probability = torch.sigmoid(logits.double())
    total, count = 0.0, 0
    for m in range(masks):
        for y in range(height):
            for x in range(width):
                for k, (dy, dx) in enumerate(offsets(kernel_size, dilation)):
                    ny, nx = y + dy, x + dx
                    inside = 0 <= ny < height and 0 <= nx < width
                    if not inside or boxes[m, y, x] == 0 or similarity[m, k, y, x] < threshold:
                        continue
                    p_i, p_j = float(probability[m, y, x]), float(probability[m, ny, nx])
                    total += -math.log(p_i * p_j + (1 - p_i) * (1 - p_j))
                    count += 1
    return total / max(count, 1)


@pytest.mark.parametrize(
    ("threshold", "kernel_size", "dilation"), [(0.0, 3, 2), (0.3, 3, 2), (0.8, 3, 2), (0.3, 5, 1)]
)
def test_pairwise_loss_matches_direct_loop(threshold, kernel_size, dilation):
    generator = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(2, 5, 6, generator=generator)
    similarity = torch.rand(2, kernel_size**2 - 1, 5, 6, generator=generator)
    boxes = torch.zeros(2, 5, 6)
    boxes[0, 1:4, 1:5] = boxes[1, 0:5, 2:6] = 1
    loss = pairwise_color_loss(logits, similarity, boxes, threshold, kernel_size, dilation)
    expected = reference_pairwise(logits, similarity, boxes, threshold, kernel_size, dilation)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_pairwise_loss_is_stable_for_extreme_logits():
    logits = torch.tensor([[[100.0, -100.0, 100.0]]], requires_grad=True)
    boxes = torch.ones(1, 1, 3)
    similarity = torch.ones(1, 8, 1, 3)
    loss = pairwise_color_loss(logits, similarity, boxes)
    # Only the pairs (x=0, x=2) and (x=2, x=0) are inside; here they agree.
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    steep = torch.tensor([[[100.0, 0.0, -100.0]]], requires_grad=True)
    loss = pairwise_color_loss(steep, similarity, boxes)
    # Now P(same) = 2 sigmoid(100) sigmoid(-100) ~ 2 exp(-100), underflowing float32 products.
    assert loss.item() == pytest.approx(100 - math.log(2), rel=1e-6)
    loss.backward()
    assert torch.isfinite(steep.grad).all() and steep.grad.abs().sum() > 0


def test_pairwise_loss_without_counted_pairs_is_zero_and_backpropagates():
    logits = torch.randn(1, 4, 4, requires_grad=True)
    loss = pairwise_color_loss(logits, torch.ones(1, 8, 4, 4), torch.zeros(1, 4, 4))
    assert loss.item() == 0
    loss.backward()
    assert logits.grad is not None


def test_pairwise_loss_rejects_bad_similarity_shape():
    with pytest.raises(ValueError, match="similarity"):
        pairwise_color_loss(torch.zeros(1, 4, 4), torch.zeros(1, 9, 4, 4), torch.zeros(1, 4, 4))
