"""Prediction heads shared by the detector and the prompt-driven model."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


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
