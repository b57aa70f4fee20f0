"""The models under ``torch.autocast`` on CPU: no dtype errors, heads, coordinates and masks at
full precision, answers close to float32 (the trained bundled model: the same detections)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unipercept.modeling.heads import MLP, in_float32
from unipercept.modeling.pretrained import bundled_models
from unipercept.structures import CategoryPrompt, ImageBatch
from unipercept.structures.boxes import box_iou

from .tiny import tiny_detector, tiny_unipercept

HALF = [torch.bfloat16, torch.float16]


def images() -> ImageBatch:
    generator = torch.Generator().manual_seed(0)
    return ImageBatch.from_images(
        [torch.randn(3, 96, 128, generator=generator), torch.randn(3, 80, 100, generator=generator)]
    )


def randomize_heads(heads: nn.ModuleList) -> None:
    """The box heads start at zero deltas, which no precision can get wrong."""
    for head in heads:
        for parameter in head.parameters():
            nn.init.normal_(parameter, std=0.2)


@pytest.mark.parametrize("dtype", HALF)
def test_in_float32_runs_the_head_at_full_precision_only_under_autocast(dtype):
    torch.manual_seed(0)
    head = MLP(input_dim=16, hidden_dim=16, output_dim=4, num_layers=3)
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=dtype):
        assert head(x).dtype == dtype  # what autocast does to a plain call
        got = in_float32(head, x.to(dtype))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, head(x.to(dtype).float()))
    assert in_float32(head.double(), x.double()).dtype == torch.float64  # no autocast: as is


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize(
    "options", [{}, {"box_refine": True}], ids=["static-queries", "box-refine"]
)
def test_detector_under_autocast_follows_float32(dtype, options):
    torch.manual_seed(0)
    model = tiny_detector(**options).eval()
    randomize_heads(model.box_heads)
    batch = images()
    with torch.no_grad():
        expected = model(batch)
        with torch.autocast("cpu", dtype=dtype):
            got = model(batch)
    assert got.logits.dtype == torch.float32 and got.boxes.dtype == torch.float32
    torch.testing.assert_close(got.logits, expected.logits, atol=0.05, rtol=0.02)
    torch.testing.assert_close(got.boxes, expected.boxes, atol=0.01, rtol=0.01)


@pytest.mark.parametrize("dtype", HALF)
def test_two_stage_detector_runs_under_autocast(dtype):
    """With random weights the encoder's proposals are nearly tied, so reduced precision may
    pick others; what must hold is that the proposals and outputs are float32 and finite."""
    torch.manual_seed(0)
    model = tiny_detector(two_stage=True, box_refine=True).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        got = model(images())
    for tensor in (got.logits, got.boxes, got.encoder.logits, got.encoder.boxes):
        assert tensor.dtype == torch.float32 and torch.isfinite(tensor).all()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("stride4", [False, True], ids=["stride8", "stride4"])
def test_unipercept_under_autocast_gives_float32_heads_and_masks(dtype, stride4):
    """Static queries: with random weights, two-stage proposals are nearly tied (as above)."""
    torch.manual_seed(0)
    model = tiny_unipercept(stride4=stride4, two_stage=False).eval()
    randomize_heads(model.heads.box)
    batch = images()
    prompts = [CategoryPrompt(("cat", "dog"))] * 2
    with torch.no_grad():
        expected = model(batch, prompts)
        with torch.autocast("cpu", dtype=dtype):
            got = model(batch, prompts)
            queries = torch.tensor([0, 3, 7])
            masks = got.mask_logits(-1, torch.tensor([0, 1, 1]), queries)
        expected_masks = expected.mask_logits(-1, torch.tensor([0, 1, 1]), queries)
    for tensor in (got.logits, got.boxes, got.quality, masks):
        assert tensor.dtype == torch.float32
    torch.testing.assert_close(got.boxes, expected.boxes, atol=0.01, rtol=0.01)
    torch.testing.assert_close(got.logits, expected.logits, atol=0.1, rtol=0.05)
    scale = expected_masks.abs().max().item()
    torch.testing.assert_close(masks, expected_masks, atol=0.05 * scale, rtol=0.0)


@pytest.mark.skipif("unipercept-tiny" not in bundled_models(), reason="bundled model not built")
@pytest.mark.parametrize("dtype", HALF)
def test_bundled_model_gives_the_same_detections_under_autocast(dtype):
    """The trained model in reduced precision finds every float32 detection again (same label,
    box IoU >= 0.95, mask IoU >= 0.9), with scores within 0.1."""
    from unipercept.api import Predictor
    from unipercept.assets import samples

    sample = samples()
    reference = Predictor.from_pretrained("unipercept-tiny")
    reduced = Predictor(reference.model, preprocess=reference.preprocess, dtype=dtype)
    expected = reference.predict(sample.image, sample.categories, task="insseg")
    got = reduced.predict(sample.image, sample.categories, task="insseg", score_threshold=0.0)
    assert len(expected) >= 3
    assert got.boxes.dtype == torch.float32 and got.scores.dtype == torch.float32
    iou = box_iou(expected.boxes, got.boxes)
    iou[expected.labels[:, None] != got.labels[None, :]] = 0.0
    best = iou.argmax(1)
    assert (iou.max(1).values >= 0.95).all(), iou.max(1).values
    assert (expected.scores - got.scores[best]).abs().max() <= 0.1
    for mask, other in zip(expected.masks, got.masks[best], strict=True):
        union = (mask | other).sum().clamp(min=1)
        assert (mask & other).sum() / union >= 0.9
