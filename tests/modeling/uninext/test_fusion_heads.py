"""UNINEXT's VL fusion block and prediction heads against the reference fixture.

Every comparison starts from tensors recorded inside UNINEXT's own run (backbone features,
decoder outputs, encoder memory) and checks the next recorded stage.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from tests.modeling.uninext.conftest import Case, strip_prefix
from unipercept.modeling.deformable_transformer import inverse_sigmoid
from unipercept.modeling.uninext.fusion import VLFusion, uninext_text_bias
from unipercept.modeling.uninext.heads import (
    MLP,
    StillClassifier,
    VLAlign,
    encoder_output_proposals,
    pool_text,
)

FUSION_PREFIX = "detr.detr.transformer.encoder.vl_layers.0."
BACKBONE_PREFIX = "detr.detr.backbone.0.backbone."


# --------------------------------------------------------------------------- helpers


def _atol(case: Case, key: str, factor: float = 20.0) -> float:
    """``factor`` x the larger of the fixture's 1-thread and float64 differences for ``key``,
    or 1e-5 x its largest value where both are 0."""
    runs = case.info["run_to_run"]
    diffs = [
        runs[table].get(key)
        for table in ("one_thread_vs_default_per_tensor", "f32_vs_f64_per_tensor")
    ]
    diffs = [value for value in diffs if isinstance(value, float)]
    scale = case.info["max_abs_value"][key]
    return max(factor * max(diffs, default=0.0), 1e-5 * scale)


def _check(ours: Tensor, case: Case, key: str, factor: float = 20.0) -> None:
    assert_close(ours, case[key], rtol=0, atol=_atol(case, key, factor))


def _load(module: nn.Module, weights: dict[str, Tensor], prefix: str) -> nn.Module:
    module.load_state_dict(strip_prefix(weights, prefix), strict=True)
    return module.eval()


def _fusion(weights: dict[str, Tensor], config: dict[str, Any]) -> VLFusion:
    sizes = config["vl_fusion"]
    fusion = VLFusion(
        visual_dim=sizes["visual_dim"],
        text_dim=sizes["text_dim"],
        embed_dim=sizes["internal_dim"],
        num_heads=sizes["heads"],
    )
    return _load(fusion, weights, FUSION_PREFIX)


def _input_proj(weights: dict[str, Tensor], res: list[Tensor]) -> list[Tensor]:
    """UNINEXT's input_proj: 1x1 conv + GN(32) on res3..res5, 3x3 s2 conv + GN on res5."""
    maps = []
    for level in range(4):
        prefix = f"detr.detr.input_proj.{level}."
        source = res[min(level, 2)]
        stride, padding = (2, 1) if level == 3 else (1, 0)
        x = F.conv2d(
            source,
            weights[prefix + "0.weight"],
            weights[prefix + "0.bias"],
            stride=stride,
            padding=padding,
        )
        maps.append(F.group_norm(x, 32, weights[prefix + "1.weight"], weights[prefix + "1.bias"]))
    return maps


def _flatten(maps: list[Tensor]) -> Tensor:
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)  # (B, sum HW, C)


def _resnet(weights: dict[str, Tensor], images: Tensor) -> list[Tensor]:
    """detectron2's ResNet (FrozenBN, stride in the 3x3 conv) -> [res3, res4, res5]."""
    w = strip_prefix(weights, BACKBONE_PREFIX)

    def conv_bn(x: Tensor, name: str, stride: int = 1) -> Tensor:
        kernel = w[name + ".weight"]
        x = F.conv2d(x, kernel, stride=stride, padding=kernel.shape[-1] // 2)
        return F.batch_norm(
            x,
            w[name + ".norm.running_mean"],
            w[name + ".norm.running_var"],
            w[name + ".norm.weight"],
            w[name + ".norm.bias"],
            training=False,
            eps=1e-5,
        )

    x = F.max_pool2d(F.relu(conv_bn(images, "stem.conv1", 2)), 3, 2, 1)
    outputs = []
    for stage in range(2, 6):
        blocks = sorted({int(k.split(".")[1]) for k in w if k.startswith(f"res{stage}.")})
        for block in blocks:
            name = f"res{stage}.{block}"
            stride = 2 if block == 0 and stage > 2 else 1
            out = F.relu(conv_bn(x, name + ".conv1"))
            out = F.relu(conv_bn(out, name + ".conv2", stride))
            out = conv_bn(out, name + ".conv3")
            shortcut = conv_bn(x, name + ".shortcut", stride) if block == 0 else x
            x = F.relu(out + shortcut)
        if stage > 2:
            outputs.append(x)
    return outputs


def _class_head(weights: dict[str, Tensor], config: dict[str, Any], layer: int) -> VLAlign:
    head = VLAlign(hidden_dim=256, text_dim=config["text_encoder"]["lang_dim"])
    return _load(head, weights, f"detr.detr.class_embed.{layer}.")


def _box_head(weights: dict[str, Tensor], layer: int) -> MLP:
    head = MLP(input_dim=256, hidden_dim=256, output_dim=4, num_layers=3)
    return _load(head, weights, f"detr.detr.bbox_embed.{layer}.")


def _iou_head(weights: dict[str, Tensor], layer: int) -> nn.Linear:
    return _load(nn.Linear(256, 1), weights, f"detr.detr.iou_head.{layer}.")


# --------------------------------------------------------------------------- fusion


def test_uninext_text_bias() -> None:
    int_mask = torch.tensor([[1, 1, 0, 0]])
    assert torch.equal(uninext_text_bias(int_mask), torch.tensor([[1.0, 1.0, -9e15, -9e15]]))
    # bool (template) masks: padding is not masked, every token gets +1
    bool_mask = torch.tensor([[True, False, True, False]])
    assert torch.equal(uninext_text_bias(bool_mask), torch.ones(1, 4))
    with pytest.raises(TypeError):
        uninext_text_bias(int_mask.float())


def test_input_proj_helper_matches_recorded_level3(uninext_weights, uninext_case) -> None:
    case = uninext_case("det")
    res = [case[f"rec.backbone.res{i}"] for i in (3, 4, 5)]
    _check(_input_proj(uninext_weights, res)[3], case, "rec.transformer_in.src3")


def test_resnet_helper_matches_recorded_backbone(uninext_weights, uninext_case) -> None:
    case = uninext_case("det")
    for index, ours in enumerate(_resnet(uninext_weights, case["input.images"])):
        _check(ours, case, f"rec.backbone.res{index + 3}")


def test_fusion_det(uninext_weights, uninext_config, uninext_case) -> None:
    case = uninext_case("det")
    fusion = _fusion(uninext_weights, uninext_config)
    res = [case[f"rec.backbone.res{i}"] for i in (3, 4, 5)]
    visual = _flatten(_input_proj(uninext_weights, res))  # (B, S, 256)
    mask = case["rec.transformer_in.lang_masks"]
    assert mask.dtype == torch.int64
    with torch.no_grad():
        visual_out, text_out = fusion(
            visual, case["rec.transformer_in.lang_hidden"], uninext_text_bias(mask)
        )
    _check(visual_out, case, "rec.fusion.visual_out")
    _check(text_out, case, "rec.fusion.lang_hidden_out")
    # the text padding mask matters: without it the visual stream is far off
    with torch.no_grad():
        unmasked, _ = fusion(visual, case["rec.transformer_in.lang_hidden"], None)
    key = "rec.fusion.visual_out"
    assert (unmasked - case[key]).abs().max() > 100 * _atol(case, key)


def test_fusion_grounding(uninext_weights, uninext_config, uninext_case) -> None:
    # The grounding case runs on the det case's images; only its text differs.
    det, case = uninext_case("det"), uninext_case("grounding")
    assert torch.equal(det["input.images"], case["input.images"])
    fusion = _fusion(uninext_weights, uninext_config)
    res = [det[f"rec.backbone.res{i}"] for i in (3, 4, 5)]
    visual = _flatten(_input_proj(uninext_weights, res))
    mask = case["rec.transformer_in.lang_masks"]
    with torch.no_grad():
        _, text_out = fusion(
            visual, case["rec.transformer_in.lang_hidden"], uninext_text_bias(mask)
        )
    _check(text_out, case, "rec.fusion.lang_hidden_out")


def test_fusion_sot_text(uninext_weights, uninext_config, uninext_case) -> None:
    """SOT search frame with the [first, updated] template tokens as text (bool mask).

    Only the fused text is recorded, and it does not depend on the text mask (text tokens attend
    to visual tokens); the bool-mask quirk acts on the visual stream, which is not recorded for
    SOT/VOS. The search frame's backbone features are not recorded either: they are rebuilt
    with :func:`_resnet`, itself checked against the det case's recorded features.
    """
    case = uninext_case("sot")
    fusion = _fusion(uninext_weights, uninext_config)
    res = _resnet(uninext_weights, case["input.frame1_image"])
    visual = _flatten(_input_proj(uninext_weights, res))
    text, mask = case["search_online.lang_hidden_in"], case["search_online.lang_masks_in"]
    assert mask.dtype == torch.bool
    key = "rec.search_online.fusion.lang_hidden_out"
    with torch.no_grad():
        _, text_out = fusion(visual, text, uninext_text_bias(mask))
    _check(text_out, case, key)


# --------------------------------------------------------------------------- decoder heads


def _check_layer_heads(
    weights: dict[str, Tensor],
    config: dict[str, Any],
    case: Case,
    stage: str,
    classifier_text: Tensor,
) -> None:
    """Logits, IoU logits and boxes of every decoder layer of one transformer pass."""
    hs = case[f"rec.{stage}decoder.hs"]  # (L, B, Q, 256)
    references = [case[f"rec.{stage}decoder.init_reference"]]
    references += list(case[f"rec.{stage}decoder.inter_references"][:-1])
    with torch.no_grad():
        for layer in range(hs.shape[0]):
            prefix = f"{stage}heads.layer{layer}."
            logits = _class_head(weights, config, layer)(hs[layer], classifier_text)
            _check(logits, case, prefix + "logits")
            _check(_iou_head(weights, layer)(hs[layer]), case, prefix + "iou_logits")
            delta = _box_head(weights, layer)(hs[layer])  # (B, Q, 4)
            boxes = (delta + inverse_sigmoid(references[layer])).sigmoid()
            _check(boxes, case, prefix + "boxes_cxcywh")


def test_heads_det(uninext_weights, uninext_config, uninext_case) -> None:
    case = uninext_case("det")
    # detection scores the queries against every token position (padding included)
    text = case["rec.fusion.lang_hidden_out"]
    _check_layer_heads(uninext_weights, uninext_config, case, "", text)


def test_heads_grounding(uninext_weights, uninext_config, uninext_case) -> None:
    case = uninext_case("grounding")
    pooled = pool_text(case["rec.fusion.lang_hidden_out"], case["rec.transformer_in.lang_masks"])
    _check(pooled, case, "heads.lang_feat_pool")
    _check_layer_heads(uninext_weights, uninext_config, case, "", pooled)


@pytest.mark.parametrize("stage", ["search_online", "search_single"])
def test_heads_sot(uninext_weights, uninext_config, uninext_case, stage: str) -> None:
    case = uninext_case("sot")
    pooled = case[f"{stage}.heads.lang_feat_pool"]
    if stage == "search_online":
        # the pool excludes template padding, unlike the fusion
        ours = pool_text(
            case["rec.search_online.fusion.lang_hidden_out"], case["search_online.lang_masks_in"]
        )
        _check(ours, case, "search_online.heads.lang_feat_pool")
    _check_layer_heads(uninext_weights, uninext_config, case, f"{stage}.", pooled)


def test_vl_align_clamps() -> None:
    head = VLAlign(hidden_dim=4, text_dim=3)
    with torch.no_grad():
        head.dot_product_projection_text.weight.fill_(1.0)
    logits = head(torch.full((1, 2, 4), 1e9), torch.ones(1, 5, 3))
    assert logits.shape == (1, 2, 5)
    assert torch.all(logits == 50000.0)


# --------------------------------------------------------------------------- encoder head


def test_encoder_proposals_det(uninext_weights, uninext_config, uninext_case) -> None:
    case = uninext_case("det")
    memory = case["rec.encoder.memory"]  # (B, S, 256)
    masks = [case[f"rec.transformer_in.pad_mask{level}"] for level in range(4)]
    pad_mask = torch.cat([m.flatten(1) for m in masks], 1)  # (B, S)
    shapes = [tuple(m.shape[-2:]) for m in masks]
    num_layers = uninext_config["transformer"]["dec_layers"]

    prefix = "detr.detr.transformer."
    enc_output = _load(nn.Linear(256, 256), uninext_weights, prefix + "enc_output.")
    enc_output_norm = _load(nn.LayerNorm(256), uninext_weights, prefix + "enc_output_norm.")
    objectness = _load(
        StillClassifier(hidden_dim=256), uninext_weights, f"detr.detr.class_embed.{num_layers}."
    )
    with torch.no_grad():
        features, proposals = encoder_output_proposals(
            memory, pad_mask, shapes, enc_output=enc_output, enc_output_norm=enc_output_norm
        )
        logits = objectness(features)  # (B, S, 1)
        coords = _box_head(uninext_weights, num_layers)(features) + proposals

    expected = case["rec.enc.output_proposals"]
    assert torch.equal(torch.isinf(proposals), torch.isinf(expected))
    assert torch.isinf(expected).any() and pad_mask.any()
    finite = torch.isfinite(expected)
    assert_close(proposals[finite], expected[finite], rtol=0, atol=1e-6)
    _check(logits, case, "rec.enc.outputs_class")
    assert torch.equal(torch.isinf(coords), torch.isinf(case["rec.enc.outputs_coord_unact"]))
    finite = torch.isfinite(coords)
    assert_close(
        coords[finite],
        case["rec.enc.outputs_coord_unact"][finite],
        rtol=0,
        atol=_atol(case, "rec.enc.outputs_coord_unact"),
    )
    num_queries = case["rec.enc.topk_indices"].shape[1]
    top = torch.topk(logits[..., 0], num_queries, dim=1)[1]
    assert torch.equal(top, case["rec.enc.topk_indices"])


@pytest.mark.parametrize("mask_dtype", [torch.int64, torch.bool])
def test_fusion_answers_the_same_with_and_without_gradients(mask_dtype) -> None:
    """Without gradients the fusion updates its logit map in place; with them it does not.
    Both give the same outputs (the recorded-output tests above run the first), and the
    second trains: gradients reach the visual tokens and every projection."""
    torch.manual_seed(0)
    fusion = VLFusion(visual_dim=16, text_dim=24, embed_dim=32, num_heads=4).eval()
    visual, text = torch.randn(2, 40, 16), torch.randn(2, 7, 24)
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, 4:] = 0
    bias = uninext_text_bias(mask if mask_dtype == torch.int64 else mask.bool())
    with torch.no_grad():
        expected = fusion(visual, text, bias)
    visual.requires_grad_(True)
    got = fusion(visual, text, bias)
    for a, b in zip(got, expected, strict=True):
        assert_close(a.detach(), b, atol=1e-6, rtol=1e-6)
    (got[0].square().sum() + got[1].square().sum()).backward()
    assert visual.grad is not None and visual.grad.abs().sum() > 0
    for name, parameter in fusion.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
