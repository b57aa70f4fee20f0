"""The released full-size UNINEXT architectures (R50, ConvNeXt-L, ViT-H), from the key manifests
of their checkpoints (``keys/*.txt``: ``key<TAB>shape<TAB>dtype``, one line per tensor): the
architecture inferred from the shapes, the model built from it on the meta device, and every
checkpoint key mapped onto exactly the model's parameters and buffers with the same shapes.

No weights are read: the manifest's tensors are stand-ins (a zero scalar expanded to the shape,
which costs no memory and, unlike meta tensors, lets the mapping check that the shared
duplicates are equal)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import Tensor

from unipercept.modeling.uninext.build import architecture_from_shapes, build_uninext
from unipercept.modeling.uninext.checkpoint import to_our_names, to_uninext_name

MANIFESTS = ("r50", "convnext_large", "vit_huge")
Manifest = dict[str, tuple[tuple[int, ...], torch.dtype]]
FIRST_LAYER = {
    "resnet": "stem.conv1.weight",
    "convnext": "downsample_layers.0.0.weight",
    "vit": "patch_embed.proj.weight",
}
POSITION_IDS = "text_encoder.body.model.embeddings.position_ids"


def read_manifest(path: Path) -> Manifest:
    """key -> (shape, dtype) of a ``keys/*.txt`` manifest."""
    entries = {}
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        entries[key] = (tuple(ast.literal_eval(shape)), getattr(torch, dtype))
    return entries


def stand_in_state(manifest: Manifest) -> dict[str, Tensor]:
    """A state dict of the manifest's shapes and dtypes without memory: zeros, expanded."""
    return {key: torch.zeros((), dtype=dt).expand(size) for key, (size, dt) in manifest.items()}


@pytest.fixture(scope="module")
def full_size(uninext_dir):
    """``full_size("r50")`` -> (manifest, architecture, meta-device model), built once."""
    cache = {}

    def load(name: str):
        if name not in cache:
            manifest = read_manifest(uninext_dir / "keys" / f"{name}.txt")
            architecture = architecture_from_shapes({k: s for k, (s, _) in manifest.items()})
            with torch.device("meta"):
                model = build_uninext(**architecture)
            cache[name] = (manifest, architecture, model)
        return cache[name]

    return load


def assert_maps_exactly(state: dict[str, Tensor], model: torch.nn.Module) -> None:
    ours = to_our_names(state, source="manifest")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = sorted(set(ours) - set(expected))
    assert not missing, f"{len(missing)} model keys not in the checkpoint, first {missing[:5]}"
    assert not unexpected, f"{len(unexpected)} checkpoint keys not in the model: {unexpected[:5]}"
    wrong = [
        (key, tuple(ours[key].shape), tuple(expected[key].shape))
        for key in expected
        if ours[key].shape != expected[key].shape or ours[key].dtype != expected[key].dtype
    ]
    assert not wrong, f"{len(wrong)} keys differ in shape or dtype (checkpoint, ours): {wrong[:5]}"


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_checkpoint_key_maps_onto_the_full_size_model(full_size, name: str) -> None:
    manifest, _, model = full_size(name)
    assert_maps_exactly(stand_in_state(manifest), model)


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_model_key_names_a_checkpoint_key(full_size, name: str) -> None:
    """The reverse naming used in messages about missing keys reaches a real checkpoint key."""
    manifest, _, model = full_size(name)
    unknown = [key for key in model.state_dict() if to_uninext_name(key) not in manifest]
    assert not unknown, f"{len(unknown)} of our keys name no checkpoint key: {unknown[:5]}"


def test_legacy_bert_position_ids_are_dropped(full_size) -> None:
    """Checkpoints saved with transformers < 4.31 hold BERT's position_ids buffer."""
    manifest, _, model = full_size("r50")
    assert POSITION_IDS not in manifest
    state = stand_in_state(manifest)
    state[POSITION_IDS] = torch.arange(512, dtype=torch.int64)[None]  # (1, 512)
    assert_maps_exactly(state, model)


@pytest.mark.parametrize("name", MANIFESTS)
def test_inferred_transformer_text_and_heads(full_size, name: str) -> None:
    _, architecture, model = full_size(name)
    assert architecture["text"] == {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    }
    inferred = {k: v for k, v in architecture.items() if k not in ("backbone", "template_backbone")}
    del inferred["text"]
    assert inferred == {
        "hidden_dim": 256,
        "num_levels": 4,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "ffn_dim": 2048,
        "encoder_points": 4,
        "decoder_points": 4,
        "num_queries": 900,
        "fusion_dim": 2048,
        "mask_dim": 8,
        "reid_layers": 2,
        "reid_points": 4,
        "template_size": 256,
        "denoising_resizer": True,
    }
    assert model.transformer.tgt_embed.weight.shape == (900, 256)
    # The template backbone is the image backbone with a fourth (prior) input channel.
    template = dict(architecture["template_backbone"])
    assert template.pop("in_channels") == 4
    backbone = dict(architecture["backbone"])
    assert backbone.pop("in_channels") == 3
    assert template == backbone
    first_layer = FIRST_LAYER[backbone["kind"]]
    assert model.template.ref_backbone.state_dict()[first_layer].shape[1] == 4
    assert model.backbone.state_dict()[first_layer].shape[1] == 3


def test_inferred_backbones(full_size) -> None:
    assert full_size("r50")[1]["backbone"] == {
        "kind": "resnet",
        "depth": 50,
        "in_channels": 3,
        "stem_channels": 64,
        "res2_channels": 256,
        "width_per_group": 64,
        "num_groups": 1,
    }
    assert full_size("convnext_large")[1]["backbone"] == {
        "kind": "convnext",
        "depths": [3, 3, 27, 3],
        "dims": [192, 384, 768, 1536],
        "in_channels": 3,
    }
    vit = full_size("vit_huge")[1]["backbone"]
    # UNINEXT's D2ViT "ViT-huge" (backbone/vit.py:392-425): window attention only in blocks
    # 0, 1, 3, 4, 6, 7, 9, 10 (ViT-B's list kept for 32 blocks); the rest are global.
    assert vit == {
        "kind": "vit",
        "embed_dim": 1280,
        "depth": 32,
        "num_heads": 16,
        "patch_size": 16,
        "in_channels": 3,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "img_size": 1024,
        "window_size": 14,
        "window_block_indexes": [0, 1, 3, 4, 6, 7, 9, 10],
        "use_rel_pos": True,
        "use_abs_pos": True,
        "pretrain_img_size": 224,
        "pretrain_use_cls_token": True,
    }
