"""Reading UNINEXT's released ``.pth`` files and renaming their keys to this model's.

A released file is ``{"model": state_dict}`` of UNINEXT's meta-architecture, read here with
``torch.load(weights_only=True)`` only: a file that needs more than tensors and plain
containers to unpickle is refused, never executed.

Key names: most of UNINEXT's modules keep their names below a new prefix (table
``PREFIXES``); the deformable encoder and decoder layers are the project's own, whose
feed-forward, self-attention and norm names differ (``_LAYER_RULES``). The decoder's
``bbox_embed``/``class_embed`` are the same modules as the outer heads, saved twice; the copies
are checked equal and dropped. ``criterion._iter`` (a training counter) and BERT's
``position_ids`` buffer (saved by transformers < 4.31) are dropped.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from unipercept.modeling.pretrained import PretrainedError

# (UNINEXT prefix, ours); the first match wins, so longer prefixes come first.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("text_encoder.body.model.", "text_encoder.bert."),
    ("detr.detr.backbone.0.backbone.", "backbone."),
    ("detr.detr.ref_backbone.0.backbone.", "template.ref_backbone."),
    ("detr.detr.input_proj.", "input_proj."),
    ("detr.detr.transformer.", "transformer."),
    ("detr.detr.class_embed.", "class_embed."),
    ("detr.detr.bbox_embed.", "bbox_embed."),
    ("detr.detr.iou_head.", "iou_head."),
    ("detr.mask_head.", "mask_branch.mask_head."),
    ("detr.controller.", "mask_branch.controller."),
    ("detr.reid_embed_head.0.", "reid_head."),
    ("detr.reid_embed_head.1.", "reid_head.embed."),
    ("detr.sot_fuser.", "template.sot_fuser."),
    ("detr.adjust_layer.", "template.adjust_layer."),
    ("detr.resizer.", "resizer."),
)
# Saved twice by UNINEXT (the decoder holds the outer heads); checked equal, then dropped.
SHARED_DUPLICATES = (
    ("detr.detr.transformer.decoder.bbox_embed.", "detr.detr.bbox_embed."),
    ("detr.detr.transformer.decoder.class_embed.", "detr.detr.class_embed."),
)
DROPPED = ("criterion._iter", "text_encoder.body.model.embeddings.position_ids")

# Inside a deformable layer of the encoder, decoder or re-id head: UNINEXT name -> ours.
# Decoder layers: UNINEXT's norm2 follows self-attention and norm1 cross-attention; the
# project's layer numbers them in order.
_ENCODER_LAYER = re.compile(r"^(transformer\.encoder\.layers\.\d+\.)(.*)$")
_DECODER_LAYER = re.compile(r"^(transformer\.decoder\.layers\.\d+\.|reid_head\.layers\.\d+\.)(.*)$")
_ENCODER_RENAMES = {"linear1.": "ffn.fc1.", "linear2.": "ffn.fc2."}
_DECODER_RENAMES = {
    "linear1.": "ffn.fc1.",
    "linear2.": "ffn.fc2.",
    "norm1.": "norm2.",
    "norm2.": "norm1.",
    "self_attn.out_proj.": "self_attn.out_proj.",
}


class UninextCheckpointError(PretrainedError):
    """A file that is not a usable UNINEXT checkpoint; the message names the file and the first
    offending key."""


def read_uninext_checkpoint(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """UNINEXT's state dict from a released ``.pth`` (``{"model": state_dict}``; a bare state
    dict is accepted too).

    Raises:
        UninextCheckpointError: a missing file, a truncated or damaged download, a pickle that
            needs code to load, or content that is not a mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UninextCheckpointError(f"{path}: no such file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as error:
        first = _first_sentence(error)
        raise UninextCheckpointError(
            f"{path}: refused: unpickling it needs more than tensors ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        first = _first_sentence(error)
        raise UninextCheckpointError(
            f"{path}: not a readable checkpoint (truncated or damaged download?): {first}"
        ) from None
    # {"model": state_dict} as released, or a bare state dict.
    wrapped = isinstance(content, Mapping) and "model" in content
    state = content["model"] if wrapped else content
    if not isinstance(state, Mapping) or not state:
        found = (
            f"keys {sorted(map(str, content))[:3]}"
            if isinstance(content, Mapping)
            else (type(content).__name__)
        )
        raise UninextCheckpointError(
            f'{path}: not a UNINEXT checkpoint: expected {{"model": state_dict}}, found {found}'
        )
    if not any(str(key).startswith("detr.") for key in state):
        raise UninextCheckpointError(
            f"{path}: not a UNINEXT checkpoint: no detr.* keys (first key {next(iter(state))})"
        )
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise UninextCheckpointError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
    return dict(state)


def to_our_names(state: Mapping[str, Tensor], *, source: str = "checkpoint") -> dict[str, Tensor]:
    """UNINEXT's state dict under this model's names.

    Raises:
        UninextCheckpointError: a key no rule maps (an unexpected key), or a shared duplicate
            that differs from its original.
    """
    renamed: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key in DROPPED:
            continue
        duplicate = next((pair for pair in SHARED_DUPLICATES if key.startswith(pair[0])), None)
        if duplicate is not None:
            original = duplicate[1] + key[len(duplicate[0]) :]
            if original not in state or not torch.equal(state[original], tensor):
                raise UninextCheckpointError(
                    f"{source}: {key} should be the same tensor as {original} (UNINEXT shares "
                    "these modules) but differs or is missing"
                )
            continue
        prefix = next((pair for pair in PREFIXES if key.startswith(pair[0])), None)
        if prefix is None:
            raise UninextCheckpointError(f"{source}: unexpected key {key}")
        for name, value in _layer_names(prefix[1] + key[len(prefix[0]) :], tensor):
            renamed[name] = value
    return renamed


def to_uninext_name(name: str) -> str:
    """The UNINEXT key of one of this model's names (for messages about missing keys)."""
    for pattern, renames in (
        (_ENCODER_LAYER, _ENCODER_RENAMES),
        (_DECODER_LAYER, _DECODER_RENAMES),
    ):
        match = pattern.match(name)
        if match:
            head, tail = match.groups()
            tail = re.sub(r"^self_attn\.[qkv]_proj\.(weight|bias)$", r"self_attn.in_proj_\1", tail)
            for theirs, ours in renames.items():
                if tail.startswith(ours):
                    tail = theirs + tail[len(ours) :]
                    break
            name = head + tail
            break
    for theirs, ours in sorted(PREFIXES, key=lambda pair: -len(pair[1])):
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name


def _layer_names(name: str, tensor: Tensor) -> list[tuple[str, Tensor]]:
    match = _ENCODER_LAYER.match(name)
    if match:
        return [(match.group(1) + _rename(match.group(2), _ENCODER_RENAMES), tensor)]
    match = _DECODER_LAYER.match(name)
    if not match:
        return [(name, tensor)]
    head, tail = match.groups()
    split = re.match(r"^self_attn\.in_proj_(weight|bias)$", tail)
    if split:
        # nn.MultiheadAttention packs q, k, v projections row-wise.
        query, key, value = tensor.chunk(3, dim=0)
        kind = split.group(1)
        return [
            (f"{head}self_attn.q_proj.{kind}", query),
            (f"{head}self_attn.k_proj.{kind}", key),
            (f"{head}self_attn.v_proj.{kind}", value),
        ]
    return [(head + _rename(tail, _DECODER_RENAMES), tensor)]


def _rename(tail: str, renames: Mapping[str, str]) -> str:
    for theirs, ours in renames.items():
        if tail.startswith(theirs):
            return ours + tail[len(theirs) :]
    return tail


def _first_sentence(error: BaseException) -> str:
    """The first line and sentence of an exception's message (torch's can run to a page)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    return text.splitlines()[0].split(". ")[0]
