"""Reduced precision at inference: a dtype from its name, and the autocast context for it.

``Predictor(model, dtype="bfloat16")`` runs every forward under :func:`autocast`; weights stay
float32, so one loaded model serves every precision, and results come back in float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from unipercept.structures import Instances

_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def parse_dtype(value: torch.dtype | str | None) -> torch.dtype:
    """The dtype named by ``value`` (None is float32).

    Raises:
        ValueError: a name or dtype other than float32, bfloat16 or float16, naming it.
    """
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        if value in (torch.float32, torch.bfloat16, torch.float16):
            return value
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {value}")
    dtype = _NAMES.get(str(value).lower().removeprefix("torch."))
    if dtype is None:
        raise ValueError(f"dtype must be one of {', '.join(sorted(_NAMES))}, got {value!r}")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``"bfloat16"`` for torch.bfloat16, and so on."""
    return str(dtype).removeprefix("torch.")


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """Runs the block under ``torch.autocast`` at ``dtype`` on ``device``'s type; float32 (or
    None) changes nothing. On CPU, bfloat16 uses the processor's AMX / AVX512-BF16 units
    through oneDNN where it has them."""
    if dtype in (None, torch.float32):
        yield
        return
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=dtype):
        yield


def float32_instances(instances: Instances) -> Instances:
    """``instances`` with every reduced-precision float field (boxes, scores, masks' logits)
    as float32; the same object when there is none."""
    changes = {
        name: value.float()
        for name, value in instances.fields().items()
        if isinstance(value, torch.Tensor) and value.dtype in (torch.bfloat16, torch.float16)
    }
    return instances.replace(**changes) if changes else instances
