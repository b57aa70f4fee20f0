"""The random generators of a training process, captured as data a checkpoint can hold and
restored on resume."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """Capture this process's random generators as ``weights_only``-loadable data.

    Returns:
        The states of python ``random``, numpy's global generator, torch's CPU generator and
        each CUDA device's generator (when CUDA is available).
    """
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # The key array becomes a list of ints: numpy arrays are refused by weights_only loads.
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generators captured by :func:`capture_rng_state`.

    CUDA states are skipped without CUDA, and only as many devices as exist now are restored,
    so a run can resume on a different machine.

    Args:
        state: A mapping returned by :func:`capture_rng_state` (possibly saved and reloaded).
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
