"""Prediction heads shared by the detector and the prompt-driven model, and
:func:`in_float32`, which runs a head at full precision under autocast."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def in_float32(head: Callable[..., Any], *inputs: Any) -> Any:
    """``head(*inputs)``, computed in float32 when autocast is on for the first input's device
    (floating tensors among ``inputs`` are cast; anything else is passed as it is).

    Box deltas and scores decide which detections win and where their boxes lie: in bfloat16 a
    box coordinate near 1 moves in steps of 1/256 of the image (2.5 px at 640 px) and nearly
    tied proposals swap ranks. The heads are a tiny part of the work (a few small matrix
    products per query), so under autocast they run at full precision, as detectors' heads do
    under mixed precision elsewhere (mmdetection's ``force_fp32``). Without autocast this is
    just ``head(*inputs)``.
    """
    device_type = inputs[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return head(*inputs)
    with torch.autocast(device_type, enabled=False):
        return head(
            *(x.float() if isinstance(x, Tensor) and x.is_floating_point() else x for x in inputs)
        )


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (DETR's box head is a 3-layer MLP).

    Args:
        input_dim, hidden_dim, output_dim: widths of the input, hidden and output features.
        num_layers: number of linear layers (>= 1).
    """

    def __init__(
        self, *, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        widths = [input_dim] + [hidden_dim] * (num_layers - 1)
        outputs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths, outputs, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x
