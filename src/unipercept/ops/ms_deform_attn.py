"""Multi-scale deformable attention (Zhu et al., Deformable DETR, 2021).

Each query reads, for every head, level and point, one bilinear sample of the value map at a
predicted location, and returns the attention-weighted sum. Three implementations give the
same numbers:

- ``"cuda"`` and ``"cpu"``: the compiled op ``torch.ops.unipercept.ms_deform_attn_forward``
  from ``csrc/ms_deform_attn`` (built by ``pip install``), with autograd and a fake kernel so
  ``torch.compile`` and ``torch.export`` trace through it;
- ``"pytorch"``: :func:`ms_deform_attn_pytorch`, ``grid_sample`` per level; the reference and
  the fallback wherever the compiled op is missing.

:func:`msda_backend` says which one runs for a device. Nothing is loaded at import: the compiled
op is imported on first use, and if it is missing that is logged once.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

Backend = Literal["cuda", "cpu", "pytorch"]

#: Set to "1" to run the PyTorch reference even where the compiled op is available.
FORCE_PYTORCH_ENV = "UNIPERCEPT_MSDA_FORCE_PYTORCH"

_EXTENSION = "unipercept.ops.MultiScaleDeformableAttention"
_OP = "unipercept::ms_deform_attn_forward"
_lock = threading.Lock()
_loaded: bool | None = None
_load_error: str | None = None
_reported: set[str] = set()
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def ms_deform_attn_pytorch(
    value: Tensor,
    spatial_shapes: Tensor | list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """The reference implementation: one ``grid_sample`` per level.

    Args and returns as :func:`ms_deform_attn` (the level start indices follow from the shapes).
    """
    batch, _, heads, head_dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    shapes = [
        (int(h), int(w))
        for h, w in (
            spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor) else spatial_shapes
        )
    ]
    value_per_level = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample wants [-1, 1] with align_corners=False: pixel i's centre is (i + 0.5) / W.
    grids = 2 * sampling_locations - 1  # (N, Q, M, L, P, 2)
    sampled = []
    for level, (height, width) in enumerate(shapes):
        level_value = (
            value_per_level[level]
            .flatten(2)
            .transpose(1, 2)  # (N, M*D, H*W)
            .reshape(batch * heads, head_dim, height, width)  # (N*M, D, H, W)
        )
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*M, Q, P, 2)
        sampled.append(
            F.grid_sample(
                level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )  # (N*M, D, Q, P)
        )
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (N*M, D, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    output = (stacked * weights).sum(-1).view(batch, heads * head_dim, queries)  # (N, M*D, Q)
    return output.transpose(1, 2).contiguous()  # (N, Q, M*D)


def _load_extension() -> bool:
    """Imports the compiled op once and registers its fake kernel and autograd formula."""
    global _loaded, _load_error
    if _loaded is not None:
        return _loaded
    with _lock:
        if _loaded is None:
            try:
                importlib.import_module(_EXTENSION)
                _register_python_parts()
                _loaded = True
            except (ImportError, OSError, RuntimeError) as error:
                _load_error = f"{type(error).__name__}: {error}"
                _loaded = False
    return _loaded


def _register_python_parts() -> None:
    def fake_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    ):
        batch, _, heads, head_dim = value.shape
        return value.new_empty((batch, sampling_locations.shape[1], heads * head_dim))

    def fake_backward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
    ):
        return (
            torch.empty_like(value),
            torch.empty_like(sampling_locations),
            torch.empty_like(attention_weights),
        )

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = torch.ops.unipercept.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, locations, weights, grad_output.contiguous()
        )
        return grad_value, None, None, grad_locations, grad_weights

    torch.library.register_fake(_OP, fake_forward)
    torch.library.register_fake("unipercept::ms_deform_attn_backward", fake_backward)
    torch.library.register_autograd(_OP, backward, setup_context=setup_context)


def _report_once(key: str, message: str) -> None:
    if key not in _reported:
        _reported.add(key)
        logger.warning(message)


# A compiled graph fixes its backend when traced: the choice depends only on what is loaded.
@torch.compiler.assume_constant_result
def msda_backend(device: torch.device | str) -> Backend:
    """Which implementation :func:`ms_deform_attn` runs for tensors on ``device``.

    Returns ``"cuda"`` or ``"cpu"`` when the compiled op is loaded and has a kernel for that
    device type, else ``"pytorch"``. ``UNIPERCEPT_MSDA_FORCE_PYTORCH=1`` forces ``"pytorch"``.
    """
    device = torch.device(device)
    if os.environ.get(FORCE_PYTORCH_ENV) == "1":
        return "pytorch"
    if not _load_extension():
        _report_once(
            "missing",
            f"unipercept: the compiled deformable-attention op is not available ({_load_error}); "
            "using the PyTorch reference implementation, which is several times slower. "
            "Rebuild with: pip install --no-build-isolation -e .",
        )
        return "pytorch"
    dispatch_key = {"cuda": "CUDA", "cpu": "CPU"}.get(device.type)
    if dispatch_key and torch._C._dispatch_has_kernel_for_dispatch_key(_OP, dispatch_key):
        return device.type  # type: ignore[return-value]
    _report_once(
        f"no-kernel-{device.type}",
        f"unipercept: the compiled deformable-attention op has no {device.type} kernel in this "
        "build; using the PyTorch reference implementation there.",
    )
    return "pytorch"


def _fail(argument: str, expected: str, tensor: object) -> None:
    if isinstance(tensor, Tensor):
        got = f"{tensor.dtype} tensor of shape {tuple(tensor.shape)} on {tensor.device}"
    else:
        got = type(tensor).__name__
    raise ValueError(f"ms_deform_attn: {argument} must be {expected}, got {got}")


def _validate(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    check_contents: bool,
) -> None:
    arguments = {
        "value": value,
        "spatial_shapes": spatial_shapes,
        "level_start_index": level_start_index,
        "sampling_locations": sampling_locations,
        "attention_weights": attention_weights,
    }
    for name, tensor in arguments.items():
        if not isinstance(tensor, Tensor):
            _fail(name, "a torch.Tensor", tensor)
    if value.ndim != 4 or not value.is_floating_point():
        _fail("value", "a floating tensor of shape (N, S, M, D)", value)
    batch, num_values, heads, _ = value.shape
    if (
        spatial_shapes.ndim != 2
        or spatial_shapes.shape[1] != 2
        or spatial_shapes.dtype != torch.int64
    ):
        _fail("spatial_shapes", "an int64 tensor of shape (L, 2)", spatial_shapes)
    levels = spatial_shapes.shape[0]
    if level_start_index.shape != (levels,) or level_start_index.dtype != torch.int64:
        _fail("level_start_index", f"an int64 tensor of shape ({levels},)", level_start_index)
    if (
        sampling_locations.ndim != 6
        or not sampling_locations.is_floating_point()
        or sampling_locations.shape[0] != batch
        or sampling_locations.shape[2] != heads
        or sampling_locations.shape[3] != levels
        or sampling_locations.shape[5] != 2
    ):
        _fail(
            "sampling_locations",
            f"a floating tensor of shape (N={batch}, Q, M={heads}, L={levels}, P, 2)",
            sampling_locations,
        )
    if (
        attention_weights.shape != sampling_locations.shape[:5]
        or not attention_weights.is_floating_point()
    ):
        _fail(
            "attention_weights",
            f"a floating tensor of shape {tuple(sampling_locations.shape[:5])}",
            attention_weights,
        )
    for name, tensor in arguments.items():
        if tensor.device != value.device:
            _fail(name, f"on value's device {value.device}", tensor)
        if not tensor.is_contiguous():
            _fail(name, "contiguous (call .contiguous() first)", tensor)
    if not check_contents or torch.compiler.is_compiling():
        return
    shapes = spatial_shapes.tolist()
    starts = level_start_index.tolist()
    total = 0
    for level, ((height, width), start) in enumerate(zip(shapes, starts, strict=True)):
        if height <= 0 or width <= 0:
            raise ValueError(
                f"ms_deform_attn: spatial_shapes[{level}] = {(height, width)} must be positive"
            )
        if start != total:
            raise ValueError(
                f"ms_deform_attn: level_start_index {starts} is inconsistent with spatial_shapes "
                f"{shapes}: level {level} should start at {total}"
            )
        total += height * width
    if total != num_values:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes {shapes} cover {total} positions but value has "
            f"S = {num_values}"
        )


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    *,
    check_contents: bool = True,
) -> Tensor:
    """Multi-scale deformable attention, on the fastest available backend.

    Args:
        value: (N, S, M, D) per-head values of all levels, flattened level by level;
            S = sum of H_l * W_l. float32, float64 (CPU), float16 or bfloat16.
        spatial_shapes: (L, 2) int64 ``(H_l, W_l)`` of each level.
        level_start_index: (L,) int64 offset of each level in S.
        sampling_locations: (N, Q, M, L, P, 2) normalised ``(x, y)``: 0 and 1 are the map's
            outer edges, pixel i's centre is ``(i + 0.5) / W``. Samples outside read zeros.
        attention_weights: (N, Q, M, L, P) weights of the samples (used as given).
        check_contents: check on the host that ``level_start_index`` and ``spatial_shapes``
            agree with each other and with S (a device-to-host copy on GPU).

    Returns:
        (N, Q, M * D) in value's dtype. Half-precision values are accumulated in float32;
        locations and weights are used in float32 (float64 for a float64 value), whatever
        their own dtype. So under ``torch.autocast`` (bfloat16 or float16 values from the
        projections before it) the op gives the float32 op's answer on the same inputs, rounded
        to value's dtype: the CUDA kernel reads half-precision values as they are, the CPU
        kernel and the PyTorch reference read them converted to float32.

    Raises:
        ValueError: naming the argument whose shape, dtype, device or contiguity is wrong.
    """
    _validate(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations,
        attention_weights,
        check_contents,
    )
    backend = msda_backend(value.device)
    out_dtype = value.dtype
    if backend != "cuda" and value.dtype in _HALF_DTYPES:
        # The CPU kernel and the reference compute in float32: rounded to bfloat16, a location
        # would move by up to 1/512 of its map (0.3 pixel on a 160-pixel-wide level).
        value = value.float()
    coordinate_dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
    if backend == "pytorch":
        output = ms_deform_attn_pytorch(
            value,
            spatial_shapes,
            sampling_locations.to(value.dtype),
            attention_weights.to(value.dtype),
        )
        return output.to(out_dtype)
    output = torch.ops.unipercept.ms_deform_attn_forward(
        value,
        spatial_shapes,
        level_start_index,
        sampling_locations.to(coordinate_dtype),
        attention_weights.to(coordinate_dtype),
    )
    return output.to(out_dtype)


def cpu_isa() -> str | None:
    """The instruction set the compiled CPU kernel uses (``"avx512"``, ``"avx2"`` or
    ``"base"``), or None without the compiled op. ``UNIPERCEPT_MSDA_CPU_ISA`` picks another
    supported one at load time."""
    if not _load_extension():
        return None
    return torch.ops.unipercept.msda_cpu_isa()
