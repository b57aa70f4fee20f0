"""UNINEXT's SOT/VOS template path against the reference fixture (UNINEXT's own code)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from tests.modeling.uninext.conftest import strip_prefix
from unipercept.modeling.uninext.template import (
    SotFuser,
    TemplateEncoder,
    TemplateTokens,
    concat_templates,
    project_features,
    template_crop,
)

# A few tens of times each tensor's float32-vs-float64 difference in the fixture (<= 4.5e-6).
ATOL_FEATURES = 1e-4
# Crops are bilinear resizes of recorded inputs (float64 difference 2.4e-7).
ATOL_CROP = 5e-6


def build_input_proj(weights: dict[str, Tensor]) -> nn.ModuleList:
    """The main model's input_proj as UNINEXT builds it, with the fixture's weights."""
    state = strip_prefix(weights, "detr.detr.input_proj.")
    layers = []
    for level in range(4):
        conv = state[f"{level}.0.weight"]
        out_channels, in_channels, kernel, _ = conv.shape
        stride, padding = (1, 0) if kernel == 1 else (2, 1)
        layers.append(
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding),
                nn.GroupNorm(32, out_channels),
            )
        )
    input_proj = nn.ModuleList(layers)
    input_proj.load_state_dict(state, strict=True)
    return input_proj.eval()


def build_encoder(weights: dict[str, Tensor], config: dict) -> TemplateEncoder:
    """A TemplateEncoder with the fixture's sot_fuser/adjust_layer; the backbone is unused by
    the tests that start from recorded backbone maps."""
    encoder = TemplateEncoder(
        ref_backbone=nn.Identity(),
        hidden_dim=config["transformer"]["hidden_dim"],
        text_dim=config["text_encoder"]["bert_config"]["hidden_size"],
        template_size=config["sot"]["template_sz"],
        search_area_factor=config["sot"]["search_area_factor"],
    )
    state = strip_prefix(weights, "detr.")
    own = {k: v for k, v in state.items() if k.startswith(("sot_fuser.", "adjust_layer."))}
    encoder.sot_fuser.load_state_dict(strip_prefix(own, "sot_fuser."), strict=True)
    encoder.adjust_layer.load_state_dict(strip_prefix(own, "adjust_layer."), strict=True)
    return encoder.eval()


def ref_maps(case, prefix: str) -> list[Tensor]:
    return [case[f"{prefix}.ref_backbone.res{i}"] for i in (3, 4, 5)]


# --- crops --------------------------------------------------------------------------------------


def test_sot_crop_box_prior(uninext_case, uninext_config):
    case = uninext_case("sot")
    size = uninext_config["sot"]["template_sz"]
    tensor_4ch, pad_mask = template_crop(
        case["input.frame0_image"][0], case["input.box_xyxy"], prior="box", size=size
    )
    assert tensor_4ch.shape == (1, 4, size, size) and pad_mask.dtype == torch.bool
    assert_close(tensor_4ch, case["template.tensor_4ch"], rtol=0, atol=ATOL_CROP)
    assert torch.equal(pad_mask, case["template.pad_mask"])


def test_sot_crop_geometry_matches_meta(uninext_case):
    """Half-to-even rounding (y1 = round(56.5) = 56) and the wider right/bottom pad: feeding
    the image's index grid shows which pixels the crop took."""
    case = uninext_case("sot")
    crop = case.meta["template_crop"]
    size = crop["crop_sz"]
    image = case["input.frame0_image"][0]
    height, width = image.shape[-2:]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32) + 1,
        torch.arange(width, dtype=torch.float32) + 1,
        indexing="ij",
    )
    grid = torch.stack([ys, xs, torch.zeros_like(xs)])  # (3, H, W) 1-based row / column index
    # At the crop's own size the bilinear resize is the identity.
    tensor_4ch, pad_mask = template_crop(grid, case["input.box_xyxy"], prior="box", size=size)
    left, right, top, bottom = crop["pads_l_r_t_b"]
    rows, cols = tensor_4ch[0, 0], tensor_4ch[0, 1]
    assert rows[top, left].item() == crop["y1"] + 1 and cols[top, left].item() == crop["x1"] + 1
    assert (rows[: size - bottom].max().item(), cols[:, : size - right].max().item()) == (
        height - 1,
        width - 1,
    )
    assert int(pad_mask[0, 0].sum()) == right and int(pad_mask[0, :, 0].sum()) == bottom
    x1, x2, y1, y2 = crop["prior_box_on_crop_x1_x2_y1_y2"]
    expected = torch.zeros(size, size)
    expected[y1:y2, x1:x2] = 1
    assert torch.equal(tensor_4ch[0, 3], expected)


def test_vos_crop_mask_prior(uninext_case, uninext_config):
    case = uninext_case("vos")
    size = uninext_config["sot"]["template_sz"]
    tensor_4ch, pad_mask = template_crop(
        case["input.frame0_image"][0],
        case["input.prompt_box_xyxy"],
        prior=case["input.prompt_mask_padded"][0],
        size=size,
    )
    assert_close(tensor_4ch, case["template_init.tensor_4ch"], rtol=0, atol=ATOL_CROP)
    assert torch.equal(pad_mask, case["template_init.pad_mask"])


def test_vos_crop_update(uninext_case, uninext_config):
    """The updated template: frame 1's image, the box and (float) mask of frame 1's result."""
    case = uninext_case("vos")
    size = uninext_config["sot"]["template_sz"]
    tensor_4ch, pad_mask = template_crop(
        case["input.frame1_image"][0],
        case["template_update.box_xyxy"],
        prior=case["template_update.prior_mask"][0],
        size=size,
    )
    assert_close(tensor_4ch, case["template_update.tensor_4ch"], rtol=0, atol=ATOL_CROP)
    assert torch.equal(pad_mask, case["template_update.pad_mask"])


def test_crop_image_padding_counts_as_padding():
    """Pixels of the batch padding inside the crop are padding too (the image's own mask)."""
    image = torch.randn(3, 32, 32)
    image_pad_mask = torch.zeros(32, 32, dtype=torch.bool)
    image_pad_mask[:, 16:] = True  # the crop spans columns 4..19
    box = torch.tensor([8.0, 8.0, 16.0, 16.0])
    _, without = template_crop(image, box, prior="box", size=16)
    _, with_pad = template_crop(image, box, prior="box", size=16, image_pad_mask=image_pad_mask)
    assert not without.any()
    assert with_pad[0, :, -1].all() and not with_pad[0, :, 0].any()


# --- encoder ------------------------------------------------------------------------------------


def test_input_proj_on_ref_backbone_maps(uninext_case, uninext_weights):
    case = uninext_case("sot")
    input_proj = build_input_proj(uninext_weights)
    with torch.no_grad():
        levels = project_features(ref_maps(case, "rec.template"), input_proj)
    assert len(levels) == 4
    for level, out in enumerate(levels):
        assert_close(out, case[f"rec.template.input_proj.out{level}"], rtol=0, atol=ATOL_FEATURES)


def test_sot_fuser_on_recorded_levels(uninext_case, uninext_weights):
    case = uninext_case("sot")
    fuser = SotFuser(in_channels=256, channels=256)
    fuser.load_state_dict(strip_prefix(uninext_weights, "detr.sot_fuser."), strict=True)
    levels = [case[f"rec.template.input_proj.out{level}"] for level in range(4)]
    with torch.no_grad():
        out = fuser(levels)
    assert_close(out, case["rec.template.template.sot_fuser_out"], rtol=0, atol=ATOL_FEATURES)


@pytest.mark.parametrize(
    ("case_name", "prefix", "template"),
    [("sot", "rec.template", "template"), ("vos", "rec.template_init", "template_init")],
)
def test_encode_features(
    uninext_case, uninext_weights, uninext_config, case_name, prefix, template
):
    case = uninext_case(case_name)
    encoder = build_encoder(uninext_weights, uninext_config)
    input_proj = build_input_proj(uninext_weights)
    with torch.no_grad():
        tokens = encoder.encode_features(
            ref_maps(case, prefix), case[f"{template}.pad_mask"], input_proj
        )
    assert_close(
        tokens.hidden, case[f"{prefix}.template.adjust_layer_out"], rtol=0, atol=ATOL_FEATURES
    )
    assert_close(tokens.hidden, case[f"{template}.lang_hidden"], rtol=0, atol=ATOL_FEATURES)
    assert tokens.masks.dtype == torch.bool
    assert torch.equal(tokens.masks, case[f"{template}.lang_masks"])
    # The token mask is the finest backbone level's padding mask, inverted.
    assert torch.equal(tokens.masks, ~case[f"{prefix}.ref_backbone.res3_pad_mask"].flatten(1))


def test_sot_template_is_partly_padded(uninext_case):
    """Guards the fixture's coverage: the SOT template has padded tokens to get right."""
    masks = uninext_case("sot")["template.lang_masks"]
    assert 0 < int(masks.sum()) < masks.numel()


def test_forward_runs_ref_backbone(uninext_case, uninext_weights, uninext_config):
    """forward = ref_backbone + encode_features; a stub backbone returns the recorded maps."""
    case = uninext_case("sot")
    maps = ref_maps(case, "rec.template")

    class Recorded(nn.Module):
        def forward(self, x: Tensor) -> dict[str, Tensor]:
            assert torch.equal(x, case["template.tensor_4ch"])
            return dict(zip(("res3", "res4", "res5"), maps, strict=True))

    encoder = build_encoder(uninext_weights, uninext_config)
    encoder.ref_backbone = Recorded()
    with torch.no_grad():
        input_proj = build_input_proj(uninext_weights)
        tokens = encoder(case["template.tensor_4ch"], case["template.pad_mask"], input_proj)
    assert_close(tokens.hidden, case["template.lang_hidden"], rtol=0, atol=ATOL_FEATURES)
    assert torch.equal(tokens.masks, case["template.lang_masks"])


def test_forward_with_d2_resnet(uninext_case, uninext_weights, uninext_config):
    """The whole path from the 4-channel template through the ref backbone, for the three
    templates of the fixture (the updated VOS template has no recorded backbone maps)."""
    resnet = pytest.importorskip("unipercept.modeling.uninext.resnet")
    backbone_config = uninext_config["backbone"]
    ref_backbone = resnet.D2ResNet(
        depth=backbone_config["depth"],
        in_channels=uninext_config["ref_backbone"]["in_channels"],
        stem_channels=backbone_config["stem_out_channels"],
        res2_channels=backbone_config["res2_out_channels"],
        width_per_group=backbone_config["width_per_group"],
        num_groups=backbone_config["num_groups"],
    )
    ref_backbone.load_state_dict(
        strip_prefix(uninext_weights, "detr.detr.ref_backbone.0.backbone."), strict=True
    )
    encoder = build_encoder(uninext_weights, uninext_config)
    encoder.ref_backbone = ref_backbone.eval()
    input_proj = build_input_proj(uninext_weights)
    for case_name, template in [
        ("sot", "template"),
        ("vos", "template_init"),
        ("vos", "template_update"),
    ]:
        case = uninext_case(case_name)
        with torch.no_grad():
            tensor_4ch, pad_mask = case[f"{template}.tensor_4ch"], case[f"{template}.pad_mask"]
            tokens = encoder(tensor_4ch, pad_mask, input_proj)
        assert_close(tokens.hidden, case[f"{template}.lang_hidden"], rtol=0, atol=ATOL_FEATURES)
        assert torch.equal(tokens.masks, case[f"{template}.lang_masks"])


def test_encode_prompt_sot(uninext_case, uninext_weights, uninext_config):
    """Crop + encode in one call, from the frame and the box prompt (stub backbone that checks
    it receives the recorded template)."""
    case = uninext_case("sot")
    maps = ref_maps(case, "rec.template")

    class Recorded(nn.Module):
        def forward(self, x: Tensor) -> list[Tensor]:
            assert torch.equal(x, case["template.tensor_4ch"])
            return maps

    encoder = build_encoder(uninext_weights, uninext_config)
    encoder.ref_backbone = Recorded()
    with torch.no_grad():
        tokens = encoder.encode_prompt(
            case["input.frame0_image"][0], case["input.box_xyxy"], build_input_proj(uninext_weights)
        )
    assert_close(tokens.hidden, case["template.lang_hidden"], rtol=0, atol=ATOL_FEATURES)
    assert torch.equal(tokens.masks, case["template.lang_masks"])


# --- concatenation ------------------------------------------------------------------------------


def test_sot_online_concatenation(uninext_case):
    """SOT with online update: [first, last updated] templates, equal on the first search."""
    case = uninext_case("sot")
    template = TemplateTokens(case["template.lang_hidden"], case["template.lang_masks"])
    joined = concat_templates(template, template)
    assert torch.equal(joined.hidden, case["search_online.lang_hidden_in"])
    assert torch.equal(joined.masks, case["search_online.lang_masks_in"])


def test_vos_concatenation(uninext_case):
    """VOS: frame 1 gets [first, previous = first]; frame 2 [first, updated]."""
    case = uninext_case("vos")
    first = TemplateTokens(case["template_init.lang_hidden"], case["template_init.lang_masks"])
    updated = TemplateTokens(
        case["template_update.lang_hidden"], case["template_update.lang_masks"]
    )
    frame1 = concat_templates(first, first)
    frame2 = concat_templates(first, updated)
    assert torch.equal(frame1.hidden, case["frame1.lang_hidden_in"])
    assert torch.equal(frame1.masks, case["frame1.lang_masks_in"])
    assert torch.equal(frame2.hidden, case["frame2.lang_hidden_in"])
    assert torch.equal(frame2.masks, case["frame2.lang_masks_in"])


def test_crop_rejects_mask_of_other_size():
    image = torch.zeros(3, 32, 32)
    with pytest.raises(ValueError):
        template_crop(image, torch.tensor([8.0, 8.0, 16.0, 16.0]), prior=torch.ones(24, 32), size=8)
