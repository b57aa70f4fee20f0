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
    """The bundled model of that name, or a folder from ``save_pretrained``, in eval mode:
    ``model.predict(image, prompt)``, ``model.start(task, prompt)``."""
    from unipercept.modeling.pretrained import load_model as _load_model

    return _load_model(name_or_path, device=device)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"unipercept.{name}")
    raise AttributeError(f"module 'unipercept' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBPACKAGES])


__all__ = ["__version__", "config", "load_model", "ops", "structures"]
