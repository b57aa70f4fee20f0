from __future__ import annotations

import pytest
import torch

from unipercept.criterion import HungarianMatcher, SetCriterion, total_loss
from unipercept.modeling import DetectionOutput, EncoderProposals
from unipercept.structures import ImageBatch, Instances, normalize_boxes

from ..modeling.tiny import tiny_detector


def test_perfect_boxes_cost_nothing_and_every_key_is_there():
    target = Instances(
        (100, 200), boxes=torch.tensor([[20.0, 10.0, 120.0, 60.0]]), labels=torch.tensor([1])
    )
    good = normalize_boxes(target.boxes, target.image_size)  # (1, 4)
    boxes = torch.cat([good, torch.tensor([[0.8, 0.8, 0.1, 0.1]])])[None, None].repeat(2, 1, 1, 1)
    logits = torch.full((2, 1, 2, 3), -9.0)
    logits[:, 0, 0, 1] = 9.0
    output = DetectionOutput(
        logits=logits,
        boxes=boxes,
        hidden_states=torch.zeros(2, 1, 2, 8),
        encoder=EncoderProposals(logits=logits[0], boxes=boxes[0]),
    )
    losses = SetCriterion(matcher=HungarianMatcher())(output, [target])
    assert set(losses) == {
        f"loss_{n}{s}" for n in ("class", "bbox", "giou") for s in ("", ".aux0", ".enc")
    }
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss_class"].item() < 1e-3
    # Class-agnostic proposals: the target counts as class 0, which the logits do not predict.
    assert losses["loss_class.enc"].item() > 1.0


def test_total_loss_weights_by_base_name():
    losses = {
        "loss_bbox": torch.tensor(1.0),
        "loss_bbox.aux0": torch.tensor(2.0),
        "loss_giou.dn1": torch.tensor(4.0),
        "other": torch.tensor(100.0),
    }
    assert total_loss(losses, {"loss_bbox": 5.0, "loss_giou": 2.0}).item() == 5 + 10 + 8
    with pytest.raises(ValueError, match="no loss in"):
        total_loss(losses, {"loss_class": 1.0})


def test_batch_size_mismatch_is_an_error():
    output = DetectionOutput(
        logits=torch.zeros(1, 2, 3, 3),
        boxes=torch.rand(1, 2, 3, 4),
        hidden_states=torch.zeros(1, 2, 3, 8),
    )
    with pytest.raises(ValueError, match="got 1 targets for a batch of 2"):
        SetCriterion(matcher=HungarianMatcher())(output, [Instances((10, 10))])


def generated_images() -> tuple[ImageBatch, list[Instances]]:
    """Two noisy images with coloured rectangles; the colour is the class."""
    generator = torch.Generator().manual_seed(0)
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])
    images, targets = [], []
    layouts = [
        [(0, 8, 8, 40, 48), (2, 60, 30, 120, 80)],
        [(1, 20, 10, 90, 60), (0, 70, 50, 110, 90)],
    ]
    for layout in layouts:
        image = torch.randn(3, 96, 128, generator=generator) * 0.3
        boxes, labels = [], []
        for label, x1, y1, x2, y2 in layout:
            image[:, y1:y2, x1:x2] = colours[label][:, None, None]
            boxes.append([x1, y1, x2, y2])
            labels.append(label)
        images.append(image)
        targets.append(
            Instances(
                (96, 128),
                boxes=torch.tensor(boxes, dtype=torch.float32),
                labels=torch.tensor(labels),
            )
        )
    return ImageBatch.from_images(images), targets


@pytest.mark.parametrize(
    "options",
    [{"box_refine": True}, {"two_stage": True, "box_refine": True, "denoising": True}],
    ids=["refine", "two-stage+denoising"],
)
def test_overfitting_one_batch_halves_the_loss(options):
    torch.manual_seed(0)
    model = tiny_detector(**options).train()
    criterion = SetCriterion(matcher=HungarianMatcher())
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    images, targets = generated_images()
    history = []
    # Bounded by steps, never by time: seeded, both variants halve their loss in under 30 steps
    # on a CPU, whatever else the machine is doing; the bound only ends a run that fails.
    for _ in range(100):
        loss = total_loss(criterion(model(images, targets), targets), criterion.weight_dict)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if history[-1] <= 0.5 * history[0] and len(history) > 20:
            break
    assert history[-1] <= 0.5 * history[0], f"loss went from {history[0]:.3f} to {history[-1]:.3f}"


def test_denoising_and_proposal_losses_are_reported_per_layer():
    torch.manual_seed(0)
    model = tiny_detector(two_stage=True, box_refine=True, denoising=True).train()
    images, targets = generated_images()
    losses = SetCriterion(matcher=HungarianMatcher())(model(images, targets), targets)
    for name in ("loss_class", "loss_bbox", "loss_giou"):
        assert {f"{name}.dn{layer}" for layer in range(3)} <= set(losses)
        assert {name, f"{name}.aux0", f"{name}.aux1", f"{name}.enc"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # Positive denoising queries start next to their targets: their boxes are already close.
    assert losses["loss_bbox.dn0"] < losses["loss_bbox.aux0"]
