"""Builds UNINEXT's backbone (ResNet, ConvNeXt or ViT) from the shapes of its weights, and the
feature-level padding masks UNINEXT derives from the pixel padding mask.

No hand-written config is needed: the kind and every size follow from a state dict's
key -> shape mapping (keys relative to :data:`BACKBONE_PREFIX` or :data:`REF_BACKBONE_PREFIX`),
and the built module is checked to hold exactly those keys with exactly those shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.modeling.uninext.convnext import ConvNeXt
from unipercept.modeling.uninext.resnet import RESNET_STAGE_BLOCKS, D2ResNet
from unipercept.modeling.uninext.vit import ViT

__all__ = [
    "BACKBONE_PREFIX",
    "REF_BACKBONE_PREFIX",
    "backbone_spec_from_shapes",
    "build_backbone",
    "build_backbone_from_shapes",
    "image_padding_mask",
    "pixel_padding_masks",
]

# Where UNINEXT's checkpoints keep the image backbone and the video models' 4-channel template
# backbone (``MaskedBackbone.backbone`` inside ``Joiner[0]``).
BACKBONE_PREFIX = "detr.detr.backbone.0.backbone."
REF_BACKBONE_PREFIX = "detr.detr.ref_backbone.0.backbone."

# Heads of the standard ViT widths, for weights without relative-position tables (whose second
# dimension is the head width): shapes cannot tell the head count otherwise.
_VIT_HEADS = {768: 12, 1024: 16, 1280: 16}

Shapes = Mapping[str, Sequence[int]]


def backbone_spec_from_shapes(shapes: Shapes, *, in_channels: int | None = None) -> dict[str, Any]:
    """Infers the backbone whose state dict has exactly these keys and shapes.

    The kind is told by its first layer (``stem.conv1.weight``: :class:`D2ResNet`,
    ``downsample_layers.0.0.weight``: :class:`ConvNeXt`, ``patch_embed.proj.weight``:
    :class:`ViT`); sizes by block counts and weight shapes. The result is checked by building
    the backbone on the meta device and comparing its state dict with ``shapes``.

    Args:
        shapes: key -> shape of the backbone's weights, keys relative to the backbone (e.g.
            ``{k[len(BACKBONE_PREFIX):]: v.shape for k, v in state_dict.items() if ...}``).
        in_channels: expected input channels (3 images, 4 template backbone); None: take them
            from the first layer.

    Returns:
        A plain, YAML-friendly dict: ``kind`` (``"resnet"``, ``"convnext"`` or ``"vit"``) and
        the keyword arguments of that class; :func:`build_backbone` turns it into the module.

    Raises:
        ValueError: naming the first key that does not fit (unknown kind, an unexpected or
            missing key, a wrong shape, or ``in_channels`` differing from the first layer's).
    """
    shapes = {key: tuple(shape) for key, shape in shapes.items()}
    match = next((entry for entry in _KINDS if entry[0] in shapes), None)
    if match is None:
        first = next(iter(shapes), None)
        raise ValueError(f"key {first!r} fits no known backbone (ResNet, ConvNeXt, ViT)")
    stem_key, kind, infer = match
    if in_channels is not None and shapes[stem_key][1] != in_channels:
        raise ValueError(
            f"key {stem_key!r} has shape {shapes[stem_key]}: {shapes[stem_key][1]} input "
            f"channels, expected {in_channels}"
        )
    spec = {"kind": kind, **infer(shapes)}
    with torch.device("meta"):
        _check_fits(build_backbone(spec), shapes)
    return spec


def build_backbone(spec: Mapping[str, Any]) -> nn.Module:
    """The backbone of a :func:`backbone_spec_from_shapes` dict, in eval mode, on the current
    default device (``with torch.device("meta"):`` gives a weightless skeleton)."""
    options = dict(spec)
    kind = options.pop("kind")
    if kind not in _CLASSES:
        raise ValueError(f"unknown backbone kind {kind!r}, expected one of {sorted(_CLASSES)}")
    return _CLASSES[kind](**options).eval()


def build_backbone_from_shapes(shapes: Shapes, *, in_channels: int | None = None) -> nn.Module:
    """:func:`build_backbone` of :func:`backbone_spec_from_shapes`: the module (:class:`D2ResNet`,
    :class:`ConvNeXt` or :class:`ViT`, not yet loaded) whose state dict has exactly these keys
    and shapes, so ``load_state_dict(..., strict=True)`` with them succeeds.

    Raises:
        ValueError: as :func:`backbone_spec_from_shapes`.
    """
    return build_backbone(backbone_spec_from_shapes(shapes, in_channels=in_channels))


def image_padding_mask(image_sizes: Tensor, height: int, width: int) -> Tensor:
    """The pixel padding mask of a padded batch.

    Args:
        image_sizes: (B, 2) (h, w) of each image before padding.
        height: padded batch height H.
        width: padded batch width W.

    Returns:
        (B, H, W) bool, True where a pixel lies beyond its image (padding).
    """
    rows = torch.arange(height, device=image_sizes.device)
    cols = torch.arange(width, device=image_sizes.device)
    inside_rows = rows[None, :] < image_sizes[:, :1]  # (B, H)
    inside_cols = cols[None, :] < image_sizes[:, 1:]  # (B, W)
    return ~(inside_rows[:, :, None] & inside_cols[:, None, :])


def pixel_padding_masks(padding: Tensor, maps: Sequence[Tensor]) -> list[Tensor]:
    """Feature-level padding masks: the pixel mask nearest-resized to each map, as UNINEXT's
    ``MaskedBackbone`` does (``F.interpolate(m[None].float(), size).to(bool)[0]``, mode
    "nearest": a feature cell copies the pixel at floor(i * H / h), not an any/all reduction).

    Args:
        padding: (B, H, W) bool, True on padding pixels.
        maps: feature maps (B, C_l, h_l, w_l).

    Returns:
        One (B, h_l, w_l) bool mask per map, True on padding.
    """
    # The batch axis stands in for channels so that one call resizes every image's mask.
    as_channels = padding[None].float()  # (1, B, H, W)
    return [F.interpolate(as_channels, size=m.shape[-2:]).to(torch.bool)[0] for m in maps]


def _check_fits(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    kind = type(module).__name__
    for key, shape in shapes.items():
        if key not in expected:
            raise ValueError(f"key {key!r} does not fit the inferred {kind}: no such weight")
        if shape != expected[key]:
            raise ValueError(
                f"key {key!r} has shape {shape}, the inferred {kind} expects {expected[key]}"
            )
    for key in expected:
        if key not in shapes:
            raise ValueError(f"key {key!r} of the inferred {kind} is missing from the weights")


def _shape(shapes: dict[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"key {key!r} is missing from the weights")
    return shapes[key]


def _count(shapes: dict[str, tuple[int, ...]], prefix: str) -> int:
    """1 + the largest index i of keys ``<prefix><i>.*`` (0 if none)."""
    indices = [
        int(key[len(prefix) :].split(".", 1)[0])
        for key in shapes
        if key.startswith(prefix) and key[len(prefix) :].split(".", 1)[0].isdigit()
    ]
    return max(indices) + 1 if indices else 0


def _resnet(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    stem = _shape(shapes, "stem.conv1.weight")  # (stem, in, 7, 7)
    blocks = tuple(_count(shapes, f"res{stage}.") for stage in range(2, 6))
    depths = {counts: depth for depth, counts in RESNET_STAGE_BLOCKS.items()}
    if blocks not in depths:
        for index, count in enumerate(blocks):
            if count not in {counts[index] for counts in depths}:
                stage_prefix = f"res{index + 2}.{max(count - 1, 0)}."
                key = next((k for k in shapes if k.startswith(stage_prefix)), stage_prefix)
                raise ValueError(
                    f"key {key!r}: {count} blocks in res{index + 2}, blocks per stage {blocks} "
                    f"match no ResNet depth {sorted(RESNET_STAGE_BLOCKS)}"
                )
        raise ValueError(f"blocks per stage {blocks} match no ResNet depth")
    bottleneck = _shape(shapes, "res2.0.conv1.weight")[0]  # (groups * width, stem, 1, 1)
    num_groups = bottleneck // _shape(shapes, "res2.0.conv2.weight")[1]  # (b, b / groups, 3, 3)
    # STRIDE_IN_1X1 and the res5 dilation leave no trace in shapes; UNINEXT uses False and 1.
    return {
        "depth": depths[blocks],
        "in_channels": stem[1],
        "stem_channels": stem[0],
        "res2_channels": _shape(shapes, "res2.0.conv3.weight")[0],
        "width_per_group": bottleneck // num_groups,
        "num_groups": num_groups,
    }


def _convnext(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    stem = _shape(shapes, "downsample_layers.0.0.weight")  # (dims[0], in, 4, 4)
    # dims from the downsampling convs, which exist even for a stage without blocks.
    dims = [stem[0]] + [_shape(shapes, f"downsample_layers.{i}.1.weight")[0] for i in (1, 2, 3)]
    depths = [_count(shapes, f"stages.{i}.") for i in range(4)]
    return {"depths": depths, "dims": dims, "in_channels": stem[1]}


def _vit(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    proj = _shape(shapes, "patch_embed.proj.weight")  # (C, in, p, p)
    embed_dim, in_channels, patch_size = proj[0], proj[1], proj[2]
    depth = _count(shapes, "blocks.")
    mlp_hidden = _shape(shapes, "blocks.0.mlp.fc1.weight")[0]  # (hidden, C)

    use_abs_pos = "pos_embed" in shapes
    pretrain_img_size, use_cls = 224, True
    if use_abs_pos:
        positions = shapes["pos_embed"][1]  # (1, [1 +] S * S, C)
        if math.isqrt(positions) ** 2 == positions:
            use_cls, grid = False, math.isqrt(positions)
        elif math.isqrt(positions - 1) ** 2 == positions - 1:
            use_cls, grid = True, math.isqrt(positions - 1)
        else:
            raise ValueError(f"key 'pos_embed' has {positions} positions: not [1 +] a square")
        pretrain_img_size = grid * patch_size

    use_rel_pos = "blocks.0.attn.rel_pos_h" in shapes
    window_size, windows, img_size = 0, [], 1024
    if use_rel_pos:
        # A table of 2 s - 1 rows serves an s x s grid: the window for window blocks, the
        # pre-training input grid (img_size / patch) for global ones, which is the larger.
        head_dim = _shape(shapes, "blocks.0.attn.rel_pos_h")[1]  # (2 s - 1, C / heads)
        num_heads = embed_dim // head_dim
        sizes = [(_shape(shapes, f"blocks.{i}.attn.rel_pos_h")[0] + 1) // 2 for i in range(depth)]
        global_size = max(sizes)
        img_size = global_size * patch_size
        # When every table has the same length all blocks are taken as global: a window block
        # is only told apart by a shorter table.
        windows = [i for i, size in enumerate(sizes) if size < global_size]
        if windows:
            window_size = sizes[windows[0]]
            for i in windows:
                if sizes[i] != window_size:
                    raise ValueError(
                        f"key 'blocks.{i}.attn.rel_pos_h' gives window {sizes[i]}, block "
                        f"{windows[0]} gives {window_size}: one window size expected"
                    )
    else:
        # Without relative-position tables neither the head count nor window attention leaves
        # a trace in the shapes; use the standard heads of the width and global attention.
        if embed_dim not in _VIT_HEADS:
            raise ValueError(
                f"key 'patch_embed.proj.weight': width {embed_dim} has no standard head count"
            )
        num_heads = _VIT_HEADS[embed_dim]
    return {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "patch_size": patch_size,
        "in_channels": in_channels,
        "mlp_ratio": mlp_hidden / embed_dim,
        "qkv_bias": "blocks.0.attn.qkv.bias" in shapes,
        "img_size": img_size,
        "window_size": window_size,
        "window_block_indexes": windows,
        "use_rel_pos": use_rel_pos,
        "use_abs_pos": use_abs_pos,
        "pretrain_img_size": pretrain_img_size,
        "pretrain_use_cls_token": use_cls,
    }


_KINDS = (
    ("stem.conv1.weight", "resnet", _resnet),
    ("downsample_layers.0.0.weight", "convnext", _convnext),
    ("patch_embed.proj.weight", "vit", _vit),
)
_CLASSES: dict[str, type[nn.Module]] = {"resnet": D2ResNet, "convnext": ConvNeXt, "vit": ViT}
