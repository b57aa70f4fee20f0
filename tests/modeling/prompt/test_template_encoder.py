"""The template path of the tiny models (UNINEXT's annotation encoder at any width)."""

from __future__ import annotations

import pytest
import torch

from unipercept.modeling.prompt import TemplatePromptEncoder, concat_templates, crop_template
from unipercept.modeling.prompt.annotation import IMAGENET_MEAN, IMAGENET_STD
from unipercept.structures import AnnotationPrompt, ImageBatch

from ..tiny import tiny_backbone, tiny_unipercept

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _frame() -> torch.Tensor:
    frame = torch.zeros(3, 200, 300, dtype=torch.uint8)
    frame[:, 80:120, 130:170] = 255  # a white 40 x 40 square
    return frame


def test_crop_marks_the_target_with_context_and_the_outside_as_padding():
    box = torch.tensor([130.0, 80.0, 170.0, 120.0])
    template, padding = crop_template(
        AnnotationPrompt(_frame(), box=box),
        size=64,
        context_factor=2.0,
        pixel_mean=MEAN,
        pixel_std=STD,
    )
    assert template.shape == (4, 64, 64) and padding.shape == (64, 64)
    prior = template[3] > 0.5
    rows, cols = prior.any(1).nonzero().flatten(), prior.any(0).nonzero().flatten()
    # Context 2: the 40-pixel box fills the middle half of the crop.
    assert int(rows.min()) in (15, 16, 17) and int(rows.max()) in (46, 47, 48)
    assert int(cols.min()) in (15, 16, 17) and int(cols.max()) in (46, 47, 48)
    assert torch.equal((template[0] > 1.0)[20:44, 20:44], prior[20:44, 20:44])
    assert not bool(padding.any())  # the crop lies inside the frame

    # At the frame's corner, the crop's left and top quarters are outside: zero and padding.
    corner = torch.tensor([0.0, 0.0, 40.0, 40.0])
    template, padding = crop_template(
        AnnotationPrompt(_frame(), box=corner),
        size=64,
        context_factor=2.0,
        pixel_mean=MEAN,
        pixel_std=STD,
    )
    assert bool(padding[:16].all()) and bool(padding[:, :16].all())
    assert not bool(padding[16:, 16:].any())
    assert float(template[:3, :15].abs().max()) == 0.0


def test_a_mask_prompt_marks_the_mask_not_its_box():
    frame = _frame()
    mask = torch.zeros(200, 300, dtype=torch.bool)
    mask[80:120, 130:150] = True  # the left half of the square
    template, _ = crop_template(
        AnnotationPrompt(frame, mask=mask),
        size=64,
        context_factor=2.0,
        pixel_mean=MEAN,
        pixel_std=STD,
    )
    prior = template[3] > 0.5
    cols = prior.any(0).nonzero().flatten()
    # The box of the mask is 20 x 40: the crop side is 2 * sqrt(800) around its centre.
    assert int(cols.max() - cols.min()) + 1 < int(prior.any(1).sum())


def _model():
    torch.manual_seed(0)
    return tiny_unipercept(annotation_encoder="template").eval()


def test_template_tokens_come_from_the_image_neck_projections():
    model = _model()
    encoder = model.prompt_encoders["annotation"]
    assert isinstance(encoder, TemplatePromptEncoder)
    # No projections of its own: the neck's serve both images and templates.
    assert not any("input_proj" in name for name, _ in encoder.named_parameters())
    prompt = AnnotationPrompt(_frame(), box=torch.tensor([130.0, 80.0, 170.0, 120.0]))
    embedding = model.encode_prompts([prompt, prompt])
    assert embedding.tokens.shape == (2, 16 * 16, 32)  # one token per stride-8 position
    assert bool(embedding.valid.all())
    torch.testing.assert_close(embedding.pooling.sum(-1), torch.ones(2, 1))
    embedding.tokens.sum().backward()
    assert model.neck.input_proj[0][0].weight.grad is not None
    assert encoder.backbone.parameters().__next__().grad is not None


def test_padding_tokens_are_invalid_and_left_out_of_the_mean():
    model = _model()
    corner = AnnotationPrompt(_frame(), box=torch.tensor([0.0, 0.0, 40.0, 40.0]))
    with torch.no_grad():
        embedding = model.encode_prompts([corner])
    valid = embedding.valid.view(16, 16)
    assert not bool(valid[:4].any()) and not bool(valid[:, :4].any()) and bool(valid[4:, 4:].all())
    torch.testing.assert_close(
        embedding.class_embeddings()[0, 0], embedding.tokens[0][embedding.valid[0]].mean(0)
    )


def test_a_template_joined_with_itself_answers_as_the_template_alone():
    model = _model()
    prompt = AnnotationPrompt(_frame(), box=torch.tensor([130.0, 80.0, 170.0, 120.0]))
    images = ImageBatch.from_images([torch.randn(3, 96, 128)])
    with torch.no_grad():
        alone = model.encode_prompts([prompt])
        twice = concat_templates([alone, alone])
        assert twice.tokens.shape[1] == 2 * alone.tokens.shape[1]
        one, two = model(images, alone), model(images, twice)
        other = model.encode_prompts(
            [AnnotationPrompt(_frame(), box=torch.tensor([10.0, 10.0, 60.0, 50.0]))]
        )
        mixed = model(images, concat_templates([alone, other]))
    torch.testing.assert_close(two.logits, one.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(two.boxes, one.boxes, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(mixed.logits, one.logits, atol=1e-3)


def test_stride4_models_feed_the_template_the_neck_levels_only():
    torch.manual_seed(0)
    model = tiny_unipercept(stride4=True, annotation_encoder="template").eval()
    prompt = AnnotationPrompt(_frame(), box=torch.tensor([130.0, 80.0, 170.0, 120.0]))
    with torch.no_grad():
        embedding = model.encode_prompts([prompt])
    assert embedding.tokens.shape == (1, 256, 32)


def test_bad_template_settings_are_refused():
    from unipercept.modeling import build_unipercept
    from unipercept.modeling.backbone import MobileNetV2

    with pytest.raises(
        ValueError, match=r"crop_size 80 gives template levels of sizes \(10, 5, 3, 2\)"
    ):
        TemplatePromptEncoder(backbone=MobileNetV2(), hidden_dim=32, crop_size=80)
    TemplatePromptEncoder(backbone=MobileNetV2(), hidden_dim=32, crop_size=96)  # 12, 6, 3, 2
    with pytest.raises(ValueError, match="context_factor must be >= 1"):
        TemplatePromptEncoder(backbone=MobileNetV2(), hidden_dim=32, context_factor=0.5)
    with pytest.raises(ValueError, match="need the image backbone's channels"):
        build_unipercept(
            backbone=MobileNetV2(),
            annotation_backbone=tiny_backbone(),
            annotation_encoder="template",
            hidden_dim=32,
            annotation_crop_size=64,
        )
    with pytest.raises(ValueError, match="annotation_encoder must be 'template' or 'pooled'"):
        build_unipercept(
            backbone=MobileNetV2(), annotation_backbone=MobileNetV2(), annotation_encoder="x"
        )
    with pytest.raises(ValueError, match="give at least one"):
        concat_templates([])
