from __future__ import annotations

import pytest
import torch
from transformers import AutoBackbone, ConvNextConfig, ResNetConfig, SwinConfig

from unipercept.modeling.backbone import FrozenBatchNorm2d, HFBackbone

CONFIGS = {
    "resnet": lambda: ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        out_features=["stage2", "stage3", "stage4"],
    ),
    "convnext": lambda: ConvNextConfig(
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    ),
    "swin": lambda: SwinConfig(
        image_size=64,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=2,
        out_features=["stage2", "stage3", "stage4"],
    ),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_strides_and_channels_match_the_maps(name):
    backbone = HFBackbone.from_config(CONFIGS[name]()).eval()
    maps = backbone(torch.randn(1, 3, 64, 96))
    assert len(maps) == len(backbone.out_strides) == len(backbone.out_channels)
    for feature, stride, channels in zip(
        maps, backbone.out_strides, backbone.out_channels, strict=True
    ):
        assert feature.shape[1] == channels
        assert feature.shape[2:] == (64 // stride, 96 // stride)


def test_unknown_architecture_strides_are_measured():
    model = AutoBackbone.from_config(CONFIGS["resnet"]())
    model.config.model_type = "something-new"  # not in the known pyramids: probe
    assert HFBackbone(model=model).out_strides == (8, 16, 32)


def test_freezing_stages():
    backbone = HFBackbone.from_config(CONFIGS["resnet"](), freeze_at=2)
    state = {n: p.requires_grad for n, p in backbone.named_parameters()}
    assert not any(v for n, v in state.items() if n.startswith("model.embedder."))
    assert not any(v for n, v in state.items() if ".stages.0." in n)
    assert all(v for n, v in state.items() if ".stages.1." in n or ".stages.3." in n)
    nothing = HFBackbone.from_config(CONFIGS["resnet"](), freeze_at=0)
    assert all(p.requires_grad for p in nothing.parameters())
    with pytest.raises(ValueError, match="num_stages must be >= 0"):
        nothing.freeze_stages(-1)


def test_batch_norm_is_frozen_and_statistics_do_not_move():
    backbone = HFBackbone.from_config(CONFIGS["resnet"](), freeze_at=0)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    x = torch.randn(2, 3, 64, 64)
    backbone.train()
    first = [m.clone() for m in backbone(x)]
    second = backbone(x)
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b)
    trainable_norms = HFBackbone.from_config(CONFIGS["resnet"](), frozen_batch_norm=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trainable_norms.modules())


def test_from_pretrained_loads_a_local_folder(tmp_path):
    torch.manual_seed(0)
    original = AutoBackbone.from_config(CONFIGS["resnet"]()).eval()
    original.save_pretrained(tmp_path)
    loaded = HFBackbone.from_pretrained(tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(x), original(x).feature_maps, strict=True):
            torch.testing.assert_close(a, b)


def test_from_pretrained_selects_outputs_and_refuses_non_backbones(tmp_path):
    AutoBackbone.from_config(CONFIGS["resnet"]()).save_pretrained(tmp_path / "resnet")
    two = HFBackbone.from_pretrained(tmp_path / "resnet", out_features=["stage3", "stage4"])
    assert two.out_strides == (16, 32)
    from transformers import BertConfig

    BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="has no transformers backbone class"):
        HFBackbone.from_pretrained(tmp_path / "bert")
