"""A linear layer at inference on CPU as one oneDNN call, with its bias and activation fused.

``F.linear`` with a bias runs on CPU as ``addmm``: in float32 it first copies the bias into
every row of the output, then adds the product, and a following ReLU is another pass over the
result. At the encoder's 6,380 tokens x 1,024, a float32 profile had those two passes take
about two-thirds as long as the multiplication. oneDNN's fused linear
(``torch.ops.mkldnn._linear_pointwise``, what PyTorch's compiler emits for CPU) adds the bias
and applies the activation as it writes the product.

:func:`linear` takes that path when no gradient is recorded, on CPU, in float32 or (where the
processor supports it in oneDNN) bfloat16, the autocast dtype if autocast is on; otherwise, or
with ``UNIPERCEPT_LINEAR_FORCE_PYTORCH=1``, it is ``F.linear`` and the activation. Either way
the result is the same up to the summation order of a matrix product. A subclass of
``nn.Linear`` or a layer with forward hooks is always called as the module, and so is every
layer while ``torch.compile``, ``torch.export`` or the JIT tracer traces it: the graph keeps
``aten.linear`` (ONNX has no oneDNN op, and a compiler fuses on its own).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {"none": lambda x: x, "relu": F.relu}
FORCE_PYTORCH = "UNIPERCEPT_LINEAR_FORCE_PYTORCH"


@functools.cache
def _fused_dtypes() -> frozenset[torch.dtype]:
    """The dtypes oneDNN's fused linear runs in here (none without oneDNN)."""
    mkldnn = torch.ops.mkldnn
    if not torch.backends.mkldnn.is_available() or not hasattr(mkldnn, "_linear_pointwise"):
        return frozenset()
    dtypes = {torch.float32}
    if mkldnn._is_mkldnn_bf16_supported():
        dtypes.add(torch.bfloat16)
    return frozenset(dtypes)


def _compute_dtype(x: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def fused_linear_applies(x: Tensor) -> bool:
    """Whether :func:`linear` on ``x`` runs as one oneDNN call."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()  # an exported graph stays portable
        and not torch.jit.is_tracing()
        and torch.backends.mkldnn.enabled
        and _compute_dtype(x) in _fused_dtypes()
        and os.environ.get(FORCE_PYTORCH) != "1"
    )


def linear(x: Tensor, layer: nn.Linear, activation: str = "none") -> Tensor:
    """``activation(layer(x))``, fused at inference on CPU (see the module docstring).

    Args:
        x: (..., in_features).
        layer: the linear layer.
        activation: "none" or "relu".

    Returns:
        (..., out_features), in the autocast dtype under autocast, else in ``x``'s dtype.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    plain = type(layer) is nn.Linear and not (layer._forward_hooks or layer._forward_pre_hooks)
    if not (plain and fused_linear_applies(x)):  # a subclass or a hook runs as the module
        return _ACTIVATIONS[activation](layer(x))
    dtype = _compute_dtype(x)
    bias = None if layer.bias is None else layer.bias.to(dtype)
    return torch.ops.mkldnn._linear_pointwise(
        x.to(dtype), layer.weight.to(dtype), bias, activation, [], ""
    )
