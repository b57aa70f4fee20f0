"""``python -m unipercept.export``: a training run's checkpoint as a model folder, and a model
as a graph (ONNX, ``torch.export``).

    python -m unipercept.export outputs/2_image_joint my-model      # run -> model folder
    python -m unipercept.export my-model det.onnx --task det --prompt "person. car"

In Python, :func:`load_model` takes a training run, its ``checkpoints/`` folder or one
checkpoint folder besides what :func:`unipercept.modeling.pretrained.load_model` takes (a
bundled name, a model folder, a UNINEXT ``.pth``); :func:`export_checkpoint` writes the folder,
:func:`export_onnx` / :func:`export_program` the graphs. The names load on first use, so
``python -m unipercept.export --help`` loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unipercept.export.checkpoint import (
        CheckpointSourceError,
        export_checkpoint,
        find_checkpoint,
        is_checkpoint_source,
        load_model,
        model_from_checkpoint,
    )
    from unipercept.export.onnx import export_onnx, export_program

# Public name -> the submodule defining it.
_LAZY = {
    "CheckpointSourceError": "checkpoint",
    "export_checkpoint": "checkpoint",
    "find_checkpoint": "checkpoint",
    "is_checkpoint_source": "checkpoint",
    "load_model": "checkpoint",
    "model_from_checkpoint": "checkpoint",
    "export_onnx": "onnx",
    "export_program": "onnx",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"unipercept.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'unipercept.export' has no attribute {name!r}")


__all__ = [
    "CheckpointSourceError",
    "export_checkpoint",
    "export_onnx",
    "export_program",
    "find_checkpoint",
    "is_checkpoint_source",
    "load_model",
    "model_from_checkpoint",
]
