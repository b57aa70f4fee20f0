"""unipercept: unified, prompt-driven instance perception.

Importing this package is cheap: it loads no torch, no Hydra, no transformers and no compiled
op. Subpackages load on first attribute access, e.g. ``unipercept.structures.Instances``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_SUBPACKAGES = (
    "api",
    "assets",
    "config",
    "criterion",
    "data",
    "engine",
    "evaluation",
    "modeling",
    "ops",
    "structures",
    "tasks",
    "tracking",
)

if TYPE_CHECKING:
    from unipercept import config, ops, structures


def load_model(name_or_path: str = "unipercept-tiny", *, device=None):
    """A model in eval mode (for ``unipercept.api.Predictor(model)``, or
    ``Predictor.from_pretrained`` in one step): the bundled model of that name, a folder from
    ``save_pretrained``, a UNINEXT ``.pth``, or a training run (its ``checkpoints/best``, else
    its newest checkpoint), its ``checkpoints/`` folder or one checkpoint folder; see
    :func:`unipercept.export.load_model`."""
    from unipercept.export import load_model as _load_model

    return _load_model(name_or_path, device=device)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"unipercept.{name}")
    raise AttributeError(f"module 'unipercept' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBPACKAGES])


__all__ = ["__version__", "config", "load_model", "ops", "structures"]
