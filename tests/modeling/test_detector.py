from __future__ import annotations

import pytest
import torch
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrSinePositionEmbedding,
)

from unipercept.modeling import SinePositionEncoding
from unipercept.structures import ImageBatch, Instances

from .tiny import tiny_detector


def batch(seed: int = 0) -> ImageBatch:
    generator = torch.Generator().manual_seed(seed)
    images = [
        torch.randn(3, 96, 128, generator=generator),
        torch.randn(3, 80, 100, generator=generator),
    ]
    return ImageBatch.from_images(images)


def targets() -> list[Instances]:
    return [
        Instances(
            (96, 128),
            boxes=torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0]]),
            labels=torch.tensor([0, 2]),
        ),
        Instances(
            (80, 100), boxes=torch.tensor([[5.0, 5.0, 40.0, 30.0]]), labels=torch.tensor([1])
        ),
    ]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"box_refine": True},
        {"two_stage": True, "box_refine": True},
        {"two_stage": True, "box_refine": True, "mixed": True},
    ],
    ids=["plain", "refine", "two-stage", "mixed"],
)
def test_output_shapes(options):
    model = tiny_detector(**options).eval()
    with torch.no_grad():
        out = model(batch())
    assert out.logits.shape == (3, 2, 10, 3)
    assert out.boxes.shape == (3, 2, 10, 4)
    assert out.hidden_states.shape == (3, 2, 10, 32)
    assert bool(((out.boxes >= 0) & (out.boxes <= 1)).all())
    if options.get("two_stage"):
        assert (
            out.encoder.logits.shape[:2]
            == out.encoder.boxes.shape[:2]
            == (2, sum(h * w for h, w in [(12, 16), (6, 8), (3, 4), (2, 2)]))
        )
    else:
        assert out.encoder is None


@pytest.mark.parametrize("look_forward_twice", [False, True])
def test_look_forward_twice_lets_a_layers_box_loss_train_the_previous_box_head(look_forward_twice):
    torch.manual_seed(0)
    model = tiny_detector(box_refine=True, look_forward_twice=look_forward_twice).train()
    out = model(batch())
    out.boxes[2].sum().backward()  # the last layer's boxes only
    previous = model.box_heads[1].layers[-1].weight.grad
    reaches_previous = previous is not None and bool(previous.abs().sum() > 0)
    assert reaches_previous == look_forward_twice


@pytest.mark.parametrize("two_stage", [False, True], ids=["static", "two-stage"])
def test_denoising_queries_do_not_leak_into_the_matching_queries(two_stage):
    torch.manual_seed(0)
    model = tiny_detector(denoising=True, two_stage=two_stage, box_refine=True).train()  # dropout 0
    images = batch()
    plain = model(images)
    torch.manual_seed(1)
    noised = model(images, targets())
    assert plain.denoising is None
    torch.testing.assert_close(noised.logits, plain.logits)
    torch.testing.assert_close(noised.boxes, plain.boxes)
    dn = noised.denoising
    groups, largest = 2, 2
    assert dn.logits.shape == (3, 2, groups * 2 * largest, 3)
    assert [len(q) for q in dn.query_index] == [groups * 2, groups * 1]
    assert dn.target_index[0].tolist() == [0, 1, 0, 1]
    assert dn.query_index[0].tolist() == [0, 1, 4, 5]  # positives; negatives follow each group
    model.eval()
    assert model(images, targets()).denoising is None  # only in training


def test_configuration_errors():
    with pytest.raises(ValueError, match="two-stage query selection needs box_refine=True"):
        tiny_detector(two_stage=True, box_refine=False)
    model = tiny_detector()
    with pytest.raises(ValueError, match="one class and one box head per decoder layer"):
        type(model)(
            backbone=model.backbone,
            neck=model.neck,
            encoder=model.encoder,
            decoder=model.decoder,
            query_selection=model.query_selection,
            class_heads=model.class_heads[:2],
            box_heads=model.box_heads,
        )


def test_position_encoding_matches_transformers():
    valid = torch.ones(2, 7, 9, dtype=torch.bool)
    valid[1, 5:] = False
    valid[1, :, 6:] = False
    ours = SinePositionEncoding(num_features=16)(valid)
    theirs = DeformableDetrSinePositionEmbedding(16, normalize=True)(
        shape=(2, 32, 7, 9), device="cpu", dtype=torch.float32, mask=valid
    )
    torch.testing.assert_close(ours, theirs)
