from __future__ import annotations

import math

import pytest
import torch

from unipercept.criterion.mask_losses import (
    dice_loss,
    mask_losses,
    point_sample,
    uncertain_point_coords,
)


def reference_losses(logits: torch.Tensor, targets: torch.Tensor, normalizer: float):
    """Focal (mean over locations per mask) and smoothed dice, summed over masks / normalizer,
    written element by element in float64. Soft targets (sampled points) use the focal loss of
    ``sigmoid_focal_loss``: alpha_t * cross entropy * (1 - p_t)^2 with p_t, alpha_t linear in t."""
    focal_total, dice_total = 0.0, 0.0
    for row, target_row in zip(logits.double().tolist(), targets.double().tolist(), strict=True):
        focal, inter, sum_p, sum_t = 0.0, 0.0, 0.0, 0.0
        for x, t in zip(row, target_row, strict=True):
            p = 1 / (1 + math.exp(-x))
            cross_entropy = -t * math.log(p) - (1 - t) * math.log(1 - p)
            p_t, alpha_t = p * t + (1 - p) * (1 - t), 0.25 * t + 0.75 * (1 - t)
            focal += alpha_t * cross_entropy * (1 - p_t) ** 2
            inter, sum_p, sum_t = inter + p * t, sum_p + p, sum_t + t
        focal_total += focal / len(row)
        dice_total += 1 - (2 * inter + 1) / (sum_p + sum_t + 1)
    return focal_total / normalizer, dice_total / normalizer


def test_dice_loss_matches_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, generator=generator)
    targets = torch.rand(3, 7, generator=generator).round()
    _, expected = reference_losses(logits, targets, 2.0)
    assert float(dice_loss(logits, targets, 2.0)) == pytest.approx(expected, rel=1e-5)


def test_dice_loss_is_zero_for_empty_prediction_of_empty_target():
    assert float(dice_loss(torch.full((1, 5), -40.0), torch.zeros(1, 5), 1.0)) < 1e-6


def test_point_sample_reads_pixel_centres_and_interpolates_linearly():
    height, width = 4, 6
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = (3.0 * xs + 5.0 * ys)[None, None].float()  # a plane: bilinear is exact inside
    centres = torch.tensor([[[(2 + 0.5) / width, (1 + 0.5) / height], [0.5 / width, 3.5 / 4]]])
    assert point_sample(image, centres)[0, 0].tolist() == pytest.approx([11.0, 15.0])
    coords = torch.tensor([[[0.3, 0.4], [0.75, 0.6]]])
    expected = [3 * (c[0] * width - 0.5) + 5 * (c[1] * height - 0.5) for c in coords[0].tolist()]
    assert point_sample(image, coords)[0, 0].tolist() == pytest.approx(expected, rel=1e-5)
    assert point_sample(image.expand(2, 3, -1, -1), coords.expand(2, -1, -1)).shape == (2, 3, 2)


def ramp_logits(masks: int = 2, size: int = 32) -> torch.Tensor:
    """Logits growing from -10 to 10 along x: certain at the sides, uncertain in the middle."""
    ramp = torch.linspace(-10, 10, size)
    return ramp.expand(masks, 1, size, size).clone()


def test_uncertain_points_prefer_uncertain_regions():
    logits = ramp_logits().requires_grad_()
    generator = torch.Generator().manual_seed(0)
    coords = uncertain_point_coords(logits, 64, 3.0, 1.0, generator=generator)
    assert coords.shape == (2, 64, 2) and not coords.requires_grad
    assert coords.min() >= 0 and coords.max() <= 1
    uniform = uncertain_point_coords(logits, 64, 3.0, 0.0, generator=generator)
    chosen = point_sample(logits.detach(), coords).abs().mean()
    random = point_sample(logits.detach(), uniform).abs().mean()
    assert chosen < 0.5 * random


def test_uncertain_points_are_reproducible_with_a_generator():
    logits = ramp_logits()
    first = uncertain_point_coords(logits, 10, generator=torch.Generator().manual_seed(3))
    second = uncertain_point_coords(logits, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"oversample_ratio": 0.5}, "oversample_ratio"),
        ({"importance_sample_ratio": 1.5}, "importance_sample_ratio"),
        ({"num_points": -1}, "num_points"),
    ],
)
def test_uncertain_points_reject_bad_arguments(kwargs, match):
    arguments = {"num_points": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        uncertain_point_coords(ramp_logits(), **arguments)


def test_dense_losses_match_formula():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 6, generator=generator)
    targets = torch.rand(3, 5, 6, generator=generator) > 0.5
    losses = mask_losses(logits, targets, 4.0)
    focal, dice = reference_losses(logits.flatten(1), targets.flatten(1).float(), 4.0)
    assert float(losses["loss_mask"]) == pytest.approx(focal, rel=1e-5)
    assert float(losses["loss_dice"]) == pytest.approx(dice, rel=1e-5)


def test_dense_losses_resize_targets_to_logit_resolution():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 4, 5, generator=generator)
    coarse = torch.rand(2, 4, 5, generator=generator) > 0.5
    # Each coarse pixel becomes a 2 x 2 block, which bilinear halving maps back exactly.
    fine = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2)
    expected = mask_losses(logits, coarse, 2.0)
    resized = mask_losses(logits, fine, 2.0)
    for key in ("loss_mask", "loss_dice"):
        assert torch.allclose(resized[key], expected[key])


def test_point_losses_match_formula_on_the_sampled_points():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 8, 8, generator=generator, requires_grad=True)
    targets = torch.rand(3, 16, 16, generator=generator) > 0.5
    losses = mask_losses(
        logits, targets, 3.0, num_points=20, generator=torch.Generator().manual_seed(9)
    )
    coords = uncertain_point_coords(
        logits[:, None].detach(), 20, generator=torch.Generator().manual_seed(9)
    )
    point_logits = point_sample(logits[:, None].detach(), coords)[:, 0]
    point_targets = point_sample(targets[:, None].float(), coords)[:, 0]
    focal, dice = reference_losses(point_logits, point_targets, 3.0)
    assert losses["loss_mask"].item() == pytest.approx(focal, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    assert ((point_targets > 0) & (point_targets < 1)).any()  # some points are soft
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_confident_correct_prediction_has_small_losses():
    targets = torch.zeros(2, 16, 16, dtype=torch.bool)
    targets[:, 4:12, 4:12] = True
    losses = mask_losses(torch.where(targets, 12.0, -12.0), targets, 2.0)
    assert float(losses["loss_mask"]) < 1e-6
    assert float(losses["loss_dice"]) < 1e-3


def test_gradients_flow_in_dense_mode():
    logits = torch.randn(2, 6, 6, requires_grad=True)
    losses = mask_losses(logits, torch.rand(2, 12, 12) > 0.5, 2.0)
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("num_points", [None, 8])
def test_no_masks_give_zero_losses_that_backpropagate(num_points):
    logits = torch.randn(0, 6, 6, requires_grad=True)
    losses = mask_losses(logits, torch.zeros(0, 12, 12), 1.0, num_points=num_points)
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert logits.grad is not None


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="mask_logits"):
        mask_losses(torch.zeros(6, 6), torch.zeros(1, 6, 6), 1.0)
    with pytest.raises(ValueError, match="target_masks"):
        mask_losses(torch.zeros(2, 6, 6), torch.zeros(3, 6, 6), 1.0)
    with pytest.raises(ValueError, match="num_points"):
        mask_losses(torch.zeros(2, 6, 6), torch.zeros(2, 6, 6), 1.0, num_points=0)
