"""UNINEXT's mask branch (mask head, controller, dynamic convolutions) and re-id head against
the tensors UNINEXT's own code recorded in the fixture."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

from tests.modeling.uninext.conftest import strip_prefix
from unipercept.modeling.outputs import MultiScaleFeatures
from unipercept.modeling.uninext.checkpoint import to_our_names
from unipercept.modeling.uninext.masks import (
    UninextMaskBranch,
    aligned_bilinear,
    mask_logits,
    memory_to_maps,
    reference_points_to_pixels,
)
from unipercept.modeling.uninext.reid import UninextReidHead, box_sine_embedding

REID_PREFIX = "detr.reid_embed_head."


def reid_weights(uninext: dict[str, Tensor]) -> dict[str, Tensor]:
    """The re-id head's UNINEXT weights under the head's own names (the converter's rules)."""
    return strip_prefix(to_our_names(uninext), "reid_head.")


def valid_ratios_from_padding(pad_masks: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """Fraction of every level that the image covers, as UNINEXT's ``get_valid_ratio``
    (``deformable_transformer_dino.py:164``): valid rows counted in the first column, valid
    columns in the first row.

    Args:
        pad_masks: one (B, h_l, w_l) bool mask per level, True on padding.

    Returns:
        (B, L, 2) ratios (w, h).
    """
    ratios = []
    for mask in pad_masks:
        _, height, width = mask.shape
        valid_height = (~mask[:, :, 0]).sum(1).float() / height
        valid_width = (~mask[:, 0, :]).sum(1).float() / width
        ratios.append(torch.stack((valid_width, valid_height), -1))
    return torch.stack(ratios, 1)


# (case, prefix of its recorded names): the mask branch is recorded for these passes.
MASK_CASES = [("det", ""), ("grounding", ""), ("sot", "search_online.")]

# Tolerances: ~10-50x the fixture's float32-vs-float64 difference of each tensor.
ATOL_FEATS = 5e-5  # rec.mask.feats: f64 diff 3.1e-6, max 1.15
ATOL_PARAMS = 3e-5  # rec.mask.dynamic_params: 1.5e-6
ATOL_PIXELS = 1e-4  # rec.mask.reference_points_px: values up to ~126
ATOL_LOGITS = 3e-3  # out.pred_mask_logits: 2.1e-4 (det) to 3.4e-4 (grounding), max 179
ATOL_REID_DECODER = 1e-4  # rec.reid.decoder_out: 3.9e-6
ATOL_REID_EMBED = 5e-5  # rec.reid.embed: 1.6e-6


@pytest.fixture(scope="module")
def mask_branch(uninext_weights: dict[str, Tensor]) -> UninextMaskBranch:
    branch = UninextMaskBranch(hidden_dim=256, mask_dim=8)
    weights = strip_prefix(uninext_weights, "detr.")
    state = {k: v for k, v in weights.items() if k.startswith(("mask_head.", "controller."))}
    branch.load_state_dict(state, strict=True)
    return branch.eval()


@pytest.fixture(scope="module")
def reid_head(uninext_weights: dict[str, Tensor], uninext_config: dict) -> UninextReidHead:
    reid = uninext_config["reid_head"]
    transformer = uninext_config["transformer"]
    head = UninextReidHead(
        num_layers=reid["n_layers"],
        hidden_dim=transformer["hidden_dim"],
        ffn_dim=transformer["dim_feedforward"],
        num_heads=transformer["nheads"],
        num_levels=transformer["num_feature_levels"],
        num_points=reid["n_points"],
    )
    head.load_state_dict(
        reid_weights({k: v for k, v in uninext_weights.items() if k.startswith(REID_PREFIX)}),
        strict=True,
    )
    return head.eval()


def _level_shapes(case, prefix: str = "") -> list[tuple[int, int]]:
    return [tuple(case[f"{prefix}rec.transformer_in.pad_mask{i}"].shape[-2:]) for i in range(4)]


def _features(case, memory: Tensor) -> MultiScaleFeatures:
    """The memory's layout from the recorded padding masks (True = padding)."""
    pad_masks = [case[f"rec.transformer_in.pad_mask{i}"] for i in range(4)]
    shapes = tuple(tuple(m.shape[-2:]) for m in pad_masks)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    level_start_index = torch.cat(
        (spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1])
    )
    return MultiScaleFeatures(
        tokens=memory,
        position=torch.zeros_like(memory),
        valid=~torch.cat([m.flatten(1) for m in pad_masks], 1),
        spatial_shapes=spatial_shapes,
        level_start_index=level_start_index,
        valid_ratios=valid_ratios_from_padding(pad_masks),
        shapes=shapes,
        maps=(),
    )


def test_aligned_bilinear_by_hand():
    # factor 2: odd outputs copy the input, even ones average it with its upper/left
    # neighbour; the first row/column repeats the edge.
    x = torch.tensor([[1.0, 3.0], [5.0, 11.0]])[None, None]
    expected = torch.tensor(
        [
            [1.0, 1.0, 2.0, 3.0],
            [1.0, 1.0, 2.0, 3.0],
            [3.0, 3.0, 5.0, 7.0],
            [5.0, 5.0, 8.0, 11.0],
        ]
    )[None, None]
    assert_close(aligned_bilinear(x, 2), expected, rtol=0, atol=1e-6)
    assert aligned_bilinear(x, 1) is x


def test_box_sine_embedding_by_hand():
    boxes = torch.tensor([[[0.25, 0.5, 0.0, 1.0]]])  # cx, cy, w, h
    embedded = box_sine_embedding(boxes, num_feats=128)
    assert embedded.shape == (1, 1, 512)
    e = embedded[0, 0]
    step = 10000 ** (2 / 128)  # wavelength of features 2 and 3
    # blocks in the order y, x, w, h; sine at even, cosine at odd features
    assert_close(
        e[0:4],
        torch.tensor([0.0, -1.0, math.sin(math.pi / step), math.cos(math.pi / step)]),
        rtol=0,
        atol=1e-6,
    )
    assert_close(e[128:130], torch.tensor([1.0, 0.0]), rtol=0, atol=1e-6)  # x = 0.25
    assert_close(e[256:384], torch.tensor([0.0, 1.0]).repeat(64), rtol=0, atol=1e-6)  # w = 0
    assert_close(e[384:386], torch.tensor([0.0, 1.0]), rtol=0, atol=1e-5)  # h = 1


def test_mask_feats_from_memory(uninext_case, mask_branch):
    case = uninext_case("det")
    shapes = _level_shapes(case)
    assert shapes == [(12, 16), (6, 8), (3, 4), (2, 2)]
    maps = memory_to_maps(case["rec.encoder.memory"], shapes)
    with torch.no_grad():
        feats = mask_branch.mask_head(maps[:3])
    assert_close(feats, case["rec.mask.feats"], rtol=0, atol=ATOL_FEATS)


@pytest.mark.parametrize(("case_name", "prefix"), MASK_CASES)
def test_controller_reads_last_decoder_layer(uninext_case, mask_branch, case_name, prefix):
    case = uninext_case(case_name)
    hidden = case[f"rec.{prefix}decoder.hs"]  # (layers, B, Q, C)
    with torch.no_grad():
        params = mask_branch.controller(hidden[-1])
    assert_close(params, case[f"rec.{prefix}mask.dynamic_params"], rtol=0, atol=ATOL_PARAMS)


@pytest.mark.parametrize(("case_name", "prefix"), MASK_CASES)
def test_reference_points_in_pixels_per_image(uninext_case, case_name, prefix):
    case = uninext_case(case_name)
    # The last decoder layer's input reference, scaled by each image's own (w, h) before
    # padding; UNINEXT stacks all images' queries into one group of B * Q.
    reference = case[f"rec.{prefix}decoder.inter_references"][-2]  # (B, Q, 4)
    if case_name == "sot":
        image_sizes = torch.tensor([case.meta["image_size"]])
    else:
        image_sizes = case["input.image_sizes"]
    pixels = reference_points_to_pixels(reference, image_sizes)  # (B, Q, 2)
    recorded = case[f"rec.{prefix}mask.reference_points_px"]  # (1, B * Q, 2)
    assert_close(pixels.reshape(recorded.shape), recorded, rtol=0, atol=ATOL_PIXELS)


@pytest.mark.parametrize(("case_name", "prefix"), MASK_CASES)
def test_dynamic_mask_logits(uninext_case, case_name, prefix):
    case = uninext_case(case_name)
    params = case[f"rec.{prefix}mask.dynamic_params"]  # (B, Q, 169)
    pixels = case[f"rec.{prefix}mask.reference_points_px"].view(*params.shape[:2], 2)
    logits = mask_logits(case[f"rec.{prefix}mask.feats"], params, pixels)
    assert_close(logits, case[f"{prefix}out.pred_mask_logits"], rtol=0, atol=ATOL_LOGITS)


def test_mask_branch_end_to_end(uninext_case, mask_branch):
    case = uninext_case("det")
    maps = memory_to_maps(case["rec.encoder.memory"], _level_shapes(case))
    pixels = reference_points_to_pixels(
        case["rec.decoder.inter_references"][-2], case["input.image_sizes"]
    )
    with torch.no_grad():
        logits = mask_branch(maps, case["rec.decoder.hs"][-1], pixels)
    assert logits.shape == (2, 30, 1, 24, 32)
    assert_close(logits, case["out.pred_mask_logits"], rtol=0, atol=ATOL_LOGITS)


def test_reid_head(uninext_case, reid_head):
    # Image 1 is zero-padded: this also pins the unmasked cross-attention (UNINEXT passes its
    # padding mask into the wrong parameter; masking changes image 1's output by ~0.5).
    case = uninext_case("det")
    memory = case["rec.encoder.memory"]
    features = _features(case, memory)
    assert bool((~features.valid).any())
    hidden = case["rec.decoder.hs"][-1]
    boxes = case["out.pred_boxes_cxcywh"]
    with torch.no_grad():
        decoded = reid_head.decode(hidden, boxes, memory, features)
        embedded = reid_head(hidden, boxes, memory, features)
    assert_close(decoded, case["rec.reid.decoder_out"], rtol=0, atol=ATOL_REID_DECODER)
    assert_close(embedded, case["rec.reid.embed"], rtol=0, atol=ATOL_REID_EMBED)
    assert_close(embedded, case["out.pred_inst_embed"], rtol=0, atol=ATOL_REID_EMBED)


@pytest.mark.parametrize("frame", [0, 1])
def test_reid_embedding_mlp_mot(uninext_case, reid_head, frame):
    # mot_embed does not record the memory, so only the MLP on the recorded decoder output
    # can be checked there.
    case = uninext_case("mot_embed")
    with torch.no_grad():
        embedded = reid_head.embed(case[f"rec.frame{frame}.reid.decoder_out"])
    assert_close(embedded, case[f"rec.frame{frame}.reid.embed"], rtol=0, atol=ATOL_REID_EMBED)
    assert_close(embedded, case[f"frame{frame}.out.pred_inst_embed"], rtol=0, atol=ATOL_REID_EMBED)


def test_convert_full_size_reid_keys(uninext_dir: Path):
    """The released R50 model's re-id keys convert onto a 2-layer, 4-point head with matching
    shapes (tensors on the meta device: no memory needed)."""
    uninext = {}
    for line in (uninext_dir / "keys" / "r50.txt").read_text().splitlines():
        key, shape, _ = line.split("\t")
        if key.startswith(REID_PREFIX):
            size = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
            uninext[key] = torch.empty(size, device="meta")
    converted = reid_weights(uninext)
    with torch.device("meta"):
        head = UninextReidHead(num_layers=2, ffn_dim=2048, num_points=4)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
