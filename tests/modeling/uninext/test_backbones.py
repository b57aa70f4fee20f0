"""UNINEXT's backbones: the tiny R50 and its 4-channel template twin against UNINEXT's recorded
features, the full-size ResNet-50 / ConvNeXt-L / ViT-H structures against the key manifests, and
small ConvNeXt / ViT configurations against independent reference computations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from tests.modeling.uninext.conftest import strip_prefix
from unipercept.modeling.uninext.backbones import (
    BACKBONE_PREFIX,
    REF_BACKBONE_PREFIX,
    backbone_spec_from_shapes,
    build_backbone,
    build_backbone_from_shapes,
    image_padding_mask,
    pixel_padding_masks,
)
from unipercept.modeling.uninext.convnext import ConvNeXt, EmbeddingLayerNorm
from unipercept.modeling.uninext.resnet import D2ResNet
from unipercept.modeling.uninext.vit import ViT, abs_pos_embed


def _build_loaded(weights: dict[str, Tensor], prefix: str):
    state = strip_prefix(weights, prefix)
    backbone = build_backbone_from_shapes({k: v.shape for k, v in state.items()})
    backbone.load_state_dict(state, strict=True)
    return backbone


def _assert_features(ours: list[Tensor], case, name: str) -> None:
    for level, feature in zip(("res3", "res4", "res5"), ours, strict=True):
        ref = case[f"{name}.{level}"]
        # No run-to-run entry for backbone maps: 1e-5 of the largest value (they are ~10).
        torch.testing.assert_close(feature, ref, rtol=0, atol=1e-5 * ref.abs().max().item())


def _read_manifest(path: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    """``key\\tshape\\tdtype`` lines -> {key relative to prefix: shape}."""
    shapes = {}
    for line in path.read_text().splitlines():
        if not line.startswith(prefix):
            continue
        key, shape, _ = line.split("\t")
        shapes[key[len(prefix) :]] = tuple(int(s) for s in shape.strip("()").split(",") if s)
    return shapes


def test_resnet_tiny_matches_uninext(uninext_weights, uninext_case, uninext_config):
    case = uninext_case("det")
    backbone = _build_loaded(uninext_weights, BACKBONE_PREFIX)
    assert isinstance(backbone, D2ResNet)
    config = uninext_config["backbone"]
    assert backbone.out_channels == tuple(
        config["out_channels"][k] for k in ("res3", "res4", "res5")
    )
    assert backbone.size_divisibility == config["size_divisibility"] == 0

    images = case["input.images"]  # (2, 3, 96, 128), image 1 zero-padded from 80x112
    with torch.no_grad():
        features = backbone(images)
    _assert_features(features, case, "rec.backbone")

    padding = image_padding_mask(case["input.image_sizes"], *images.shape[-2:])
    masks = pixel_padding_masks(padding, features)
    for level, mask in zip(("res3", "res4", "res5"), masks, strict=True):
        assert torch.equal(mask, case[f"rec.backbone.{level}_pad_mask"]), level
    assert masks[0][1].any(), "image 1 is padded: its res3 mask must not be empty"


def test_template_backbone_matches_uninext(uninext_weights, uninext_case):
    case = uninext_case("sot")
    backbone = _build_loaded(uninext_weights, REF_BACKBONE_PREFIX)
    assert backbone.stem.conv1.in_channels == 4

    template = case["template.tensor_4ch"]  # (1, 4, 64, 64) RGB + box prior
    with torch.no_grad():
        features = backbone(template)
    _assert_features(features, case, "rec.template.ref_backbone")

    masks = pixel_padding_masks(case["template.pad_mask"], features)
    for level, mask in zip(("res3", "res4", "res5"), masks, strict=True):
        assert torch.equal(mask, case[f"rec.template.ref_backbone.{level}_pad_mask"]), level


@pytest.mark.parametrize("prefix", [BACKBONE_PREFIX, REF_BACKBONE_PREFIX])
@pytest.mark.parametrize(
    ("manifest", "kind", "out_channels", "in_channels_3ch"),
    [
        ("r50.txt", D2ResNet, (512, 1024, 2048), 3),
        ("convnext_large.txt", ConvNeXt, (384, 768, 1536), 3),
        ("vit_huge.txt", ViT, (640, 1280, 1280), 3),
    ],
)
def test_full_size_structure(uninext_dir, prefix, manifest, kind, out_channels, in_channels_3ch):
    shapes = _read_manifest(uninext_dir / "keys" / manifest, prefix)
    assert shapes
    with torch.device("meta"):
        backbone = build_backbone_from_shapes(shapes)
    assert isinstance(backbone, kind)
    built = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert set(built) - set(shapes) == set(), "unexpected keys"
    assert set(shapes) - set(built) == set(), "missing keys"
    assert built == shapes
    assert backbone.out_channels == out_channels
    assert backbone.out_strides == (8, 16, 32)
    in_channels = in_channels_3ch if prefix == BACKBONE_PREFIX else 4
    first = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == in_channels
    if kind is ViT:
        windows = [i for i, block in enumerate(backbone.blocks) if block.window_size == 14]
        assert windows == [0, 1, 3, 4, 6, 7, 9, 10]
        assert all(b.window_size in (0, 14) for b in backbone.blocks)
        assert backbone.blocks[0].attn.num_heads == 16
        assert backbone.size_divisibility == 32
    if kind is D2ResNet:
        assert [len(getattr(backbone, f"res{i}")) for i in range(2, 6)] == [3, 4, 6, 3]


def test_backbone_spec_matches_config(uninext_weights, uninext_config, uninext_dir):
    config = uninext_config["backbone"]
    shapes = {k: v.shape for k, v in strip_prefix(uninext_weights, REF_BACKBONE_PREFIX).items()}
    spec = backbone_spec_from_shapes(shapes, in_channels=4)
    assert spec == {
        "kind": "resnet",
        "depth": config["depth"],
        "in_channels": uninext_config["ref_backbone"]["in_channels"],
        "stem_channels": config["stem_out_channels"],
        "res2_channels": config["res2_out_channels"],
        "width_per_group": config["width_per_group"],
        "num_groups": config["num_groups"],
    }
    # Plain values only, so that the spec can live in a config file and come back unchanged.
    assert yaml.safe_load(yaml.safe_dump(spec)) == spec
    assert isinstance(build_backbone(spec), D2ResNet)

    vit = backbone_spec_from_shapes(
        _read_manifest(uninext_dir / "keys" / "vit_huge.txt", BACKBONE_PREFIX), in_channels=3
    )
    assert yaml.safe_load(yaml.safe_dump(vit)) == vit
    assert (vit["embed_dim"], vit["depth"], vit["num_heads"], vit["patch_size"]) == (
        1280,
        32,
        16,
        16,
    )
    assert (vit["img_size"], vit["window_size"], vit["pretrain_img_size"]) == (1024, 14, 224)
    assert vit["window_block_indexes"] == [0, 1, 3, 4, 6, 7, 9, 10]
    assert vit["pretrain_use_cls_token"] and vit["use_rel_pos"] and vit["mlp_ratio"] == 4.0


def test_build_names_the_key_that_does_not_fit(uninext_dir):
    shapes = _read_manifest(uninext_dir / "keys" / "r50.txt", BACKBONE_PREFIX)
    with torch.device("meta"):
        wrong = dict(shapes)
        wrong["res3.0.conv2.weight"] = (128, 128, 5, 5)
        with pytest.raises(ValueError, match=r"res3\.0\.conv2\.weight"):
            build_backbone_from_shapes(wrong)
        extra = dict(shapes)
        extra["res2.0.conv4.weight"] = (256, 64, 1, 1)
        with pytest.raises(ValueError, match=r"res2\.0\.conv4\.weight"):
            build_backbone_from_shapes(extra)
        missing = {k: v for k, v in shapes.items() if k != "res4.2.conv1.norm.running_var"}
        with pytest.raises(ValueError, match=r"res4\.2\.conv1\.norm\.running_var"):
            build_backbone_from_shapes(missing)
        with pytest.raises(ValueError, match=r"stem\.conv1\.weight"):
            build_backbone_from_shapes(shapes, in_channels=4)
        with pytest.raises(ValueError, match=r"head\.weight"):
            build_backbone_from_shapes({"head.weight": (3, 3)})


def test_convnext_small_maps_and_layer_norm():
    torch.manual_seed(0)
    backbone = ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 32, 64), in_channels=3).eval()
    for name, parameter in backbone.named_parameters():
        if name.endswith(("weight.weight", "bias.weight", "gamma.weight")):
            parameter.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        features = backbone(x)
    assert [tuple(f.shape) for f in features] == [(2, 16, 8, 12), (2, 32, 4, 6), (2, 64, 2, 3)]
    assert backbone.out_channels == (16, 32, 64)
    assert backbone.size_divisibility == 32

    # The channels-first LayerNorm (UNINEXT's explicit formula) is F.layer_norm over channels.
    norm = backbone.norm3
    y = torch.randn(2, 64, 3, 5) * 3 + 1
    expected = F.layer_norm(
        y.permute(0, 2, 3, 1), (64,), norm.weight.weight[0], norm.bias.weight[0], eps=1e-6
    ).permute(0, 3, 1, 2)
    torch.testing.assert_close(norm(y), expected, rtol=0, atol=1e-5)
    last = EmbeddingLayerNorm(64, channels_first=False)
    torch.testing.assert_close(
        last(y.permute(0, 2, 3, 1)), F.layer_norm(y.permute(0, 2, 3, 1), (64,), eps=1e-6)
    )


def _small_vit(**kwargs) -> ViT:
    torch.manual_seed(0)
    options = dict(
        embed_dim=32,
        depth=4,
        num_heads=2,
        patch_size=16,
        img_size=128,
        window_size=4,
        window_block_indexes=(0, 2),
        pretrain_img_size=64,
    )
    options.update(kwargs)
    vit = ViT(**options).eval()
    for name, parameter in vit.named_parameters():
        if "rel_pos" in name or name == "pos_embed":
            parameter.data.normal_(0, 0.5)
    return vit


def test_vit_small_maps():
    vit = _small_vit()
    with torch.no_grad():
        features = vit(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(2, 16, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    assert vit.out_channels == (16, 32, 32)
    assert vit.out_strides == (8, 16, 32)
    # Built from its own shapes: windows, heads and sizes are inferred back.
    rebuilt = build_backbone_from_shapes({k: v.shape for k, v in vit.state_dict().items()})
    assert [b.window_size for b in rebuilt.blocks] == [4, 0, 4, 0]
    assert rebuilt.blocks[0].attn.num_heads == 2
    rebuilt.load_state_dict(vit.state_dict())
    with torch.no_grad():
        for ours, theirs in zip(
            rebuilt(torch.ones(1, 3, 64, 64)), vit(torch.ones(1, 3, 64, 64)), strict=True
        ):
            assert torch.equal(ours, theirs)


def test_vit_rel_pos_attention_matches_direct_formula():
    """logit(i j -> k l) = scale q.k + q.Rh[i - k] + q.Rw[j - l] (unscaled q in the position
    terms, ViTDet's decomposed relative positions), computed pair by pair."""
    vit = _small_vit()
    attn = vit.blocks[1].attn  # a global block: table for an 8x8 grid, used on 3x4 (resized)
    attn.rel_pos_h.data = torch.randn(5, 16)  # exactly 2 * 3 - 1 rows: no resize along h
    attn.rel_pos_w.data = torch.randn(7, 16)  # exactly 2 * 4 - 1 rows: no resize along w
    height, width, heads, dim = 3, 4, 2, 16
    x = torch.randn(1, height, width, 32)
    with torch.no_grad():
        ours = attn(x)
        q, k, v = attn.qkv(x).reshape(height * width, 3, heads, dim).unbind(1)  # (HW, heads, d)
        out = torch.zeros(height * width, heads, dim)
        for h in range(heads):
            logits = torch.zeros(height * width, height * width)
            for i in range(height):
                for j in range(width):
                    for a in range(height):
                        for b in range(width):
                            qi = q[i * width + j, h]
                            logits[i * width + j, a * width + b] = (
                                qi @ k[a * width + b, h] * dim**-0.5
                                + qi @ attn.rel_pos_h[i - a + height - 1]
                                + qi @ attn.rel_pos_w[j - b + width - 1]
                            )
            out[:, h] = logits.softmax(-1) @ v[:, h]
        expected = attn.proj(out.reshape(1, height, width, heads * dim))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def test_vit_window_equal_to_grid_is_global_attention():
    # 64 px / patch 16: a 4x4 global grid, so every table has 7 rows in both models.
    vit = _small_vit(window_size=4, window_block_indexes=(0,), img_size=64)
    global_vit = _small_vit(window_size=0, window_block_indexes=(), img_size=64)
    global_vit.load_state_dict(vit.state_dict())
    x = torch.randn(1, 4, 4, 32)
    with torch.no_grad():
        torch.testing.assert_close(vit.blocks[0](x), global_vit.blocks[0](x), rtol=0, atol=1e-6)
        # Window 2 splits the grid: results must differ, or windows were not applied.
        vit.blocks[0].window_size = 2
        assert not torch.allclose(vit.blocks[0](x), global_vit.blocks[0](x), atol=1e-3)


def test_vit_abs_pos_embed_identity_at_pretrain_grid():
    table = torch.randn(1, 1 + 4 * 4, 8)
    same = abs_pos_embed(table, has_cls_token=True, grid=(4, 4))
    assert torch.equal(same, table[:, 1:].reshape(1, 4, 4, 8))
    resized = abs_pos_embed(table, has_cls_token=True, grid=(4, 6))
    assert resized.shape == (1, 4, 6, 8)
    # A constant table stays constant under bicubic resizing: the class token is dropped.
    flat = torch.cat([torch.full((1, 1, 8), 9.0), torch.ones(1, 16, 8)], dim=1)
    torch.testing.assert_close(
        abs_pos_embed(flat, has_cls_token=True, grid=(4, 6)), torch.ones(1, 4, 6, 8)
    )
