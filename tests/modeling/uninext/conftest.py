"""The UNINEXT reference fixture (``../shared/fixtures/uninext_r50_tiny``): UNINEXT's own code
run on a tiny model with seeded random weights, every stage recorded. Tests that use it skip
when the folder is absent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor


@dataclass(frozen=True)
class Case:
    """One recorded case: ``meta`` is the json's non-tensor data (captions, sizes, ...),
    ``tensors`` every recorded tensor by name (e.g. ``"rec.backbone.res3"``)."""

    name: str
    info: dict[str, Any]
    tensors: dict[str, Tensor]

    @property
    def meta(self) -> dict[str, Any]:
        return self.info["meta"]

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]


@pytest.fixture(scope="session")
def uninext_dir(fixtures_dir: Path) -> Path:
    folder = fixtures_dir / "uninext_r50_tiny"
    if not folder.is_dir():
        pytest.skip(f"UNINEXT reference fixture not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def uninext_config(uninext_dir: Path) -> dict[str, Any]:
    return json.loads((uninext_dir / "config.json").read_text())


@pytest.fixture(scope="session")
def uninext_weights(uninext_dir: Path) -> dict[str, Tensor]:
    """The full state dict with UNINEXT's key names (shared duplicates included)."""
    return load_file(str(uninext_dir / "weights.safetensors"))


@pytest.fixture(scope="session")
def uninext_case(uninext_dir: Path):
    """``uninext_case("det")`` -> :class:`Case` (loaded once per name)."""
    cache: dict[str, Case] = {}

    def load(name: str) -> Case:
        if name not in cache:
            info = json.loads((uninext_dir / "cases" / f"{name}.json").read_text())
            tensors = load_file(str(uninext_dir / "cases" / f"{name}.safetensors"))
            cache[name] = Case(name, info, tensors)
        return cache[name]

    return load


def strip_prefix(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix`` with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def unpack_masks(packed: Tensor, height: int, width: int) -> Tensor:
    """The fixture's bit-packed masks (N, ceil(H*W/8)) uint8 -> (N, H, W) bool."""
    bits = np.unpackbits(packed.numpy(), axis=1, count=height * width)
    return torch.from_numpy(bits.reshape(-1, height, width).astype(bool))


@pytest.fixture(scope="session")
def uninext_model(uninext_weights):
    """The fixture's tiny UNINEXT, built from its checkpoint's shapes (template side 64, as the
    fixture's config) with its weights loaded, in eval mode. Shared: do not modify it."""
    from unipercept.modeling.uninext.build import architecture_from_shapes, build_uninext
    from unipercept.modeling.uninext.checkpoint import to_our_names

    shapes = {key: tuple(value.shape) for key, value in uninext_weights.items()}
    model = build_uninext(**architecture_from_shapes(shapes, template_size=64))
    model.load_state_dict(to_our_names(uninext_weights), strict=True)
    return model.eval()
