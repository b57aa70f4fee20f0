"""ConvNeXt as UNINEXT's ConvNeXt-L models use it (``uninext/backbone/convnext.py``).

Key names are UNINEXT's relative to ``detr.detr.backbone.0.backbone.`` (``downsample_layers.*``,
``stages.<i>.<j>.*``, ``norm1..3``). Two storage quirks of UNINEXT's copy are kept so that its
weights load unchanged: every LayerNorm keeps its weight and bias as ``nn.Embedding(1, C)``
(keys ``...weight.weight`` / ``...bias.weight``, shape (1, C)), and the layer scale ``gamma`` is an
``nn.Embedding(1, C)`` as well (key ``...gamma.weight``). Drop path is the identity at inference
and is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvNeXt", "EmbeddingLayerNorm"]

_EPS = 1e-6


class EmbeddingLayerNorm(nn.Module):
    """LayerNorm over channels whose affine parameters are ``nn.Embedding(1, C)`` tables.

    ``channels_first`` normalises (B, C, H, W) over C with UNINEXT's explicit formula (biased
    variance, eps inside the square root); otherwise the input is (..., C) and
    ``F.layer_norm`` is used, as in UNINEXT.
    """

    def __init__(self, channels: int, *, channels_first: bool, eps: float = _EPS) -> None:
        super().__init__()
        self.weight = nn.Embedding(1, channels)
        self.bias = nn.Embedding(1, channels)
        nn.init.ones_(self.weight.weight)
        nn.init.zeros_(self.bias.weight)
        self.channels_first = channels_first
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.weight[0]  # (C,)
        bias = self.bias.weight[0]  # (C,)
        if not self.channels_first:
            return F.layer_norm(x, weight.shape, weight, bias, self.eps)
        mean = x.mean(1, keepdim=True)  # (B, 1, H, W)
        var = (x - mean).pow(2).mean(1, keepdim=True)  # (B, 1, H, W)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return weight[:, None, None] * x + bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.embedding_dim}, channels_first={self.channels_first}, eps={self.eps}"


class _Block(nn.Module):
    """Depthwise 7x7 conv -> LN (channels last) -> Linear 4x -> GELU -> Linear -> layer scale,
    plus the input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = EmbeddingLayerNorm(dim, channels_first=False)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # UNINEXT's ConvNeXt configs all use layer scale (initialised to 1.0).
        self.gamma = nn.Embedding(1, dim)
        nn.init.ones_(self.gamma.weight)

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))  # (B, H, W, C)
        y = self.gamma.weight[0] * y
        return x + y.permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvNeXt(nn.Module):
    """ConvNeXt returning the channels-first-LayerNormed outputs of stages 1-3 (res3..res5).

    Stage 0's output (stride 4) is computed but not returned, as in UNINEXT, whose configs only
    ask for res3..res5; it therefore has no output norm (``norm1..norm3`` only).

    Attributes:
        out_channels: dims[1], dims[2], dims[3].
        out_strides: (8, 16, 32).
        size_divisibility: 32 - UNINEXT pads ConvNeXt batches to a multiple of 32.
    """

    out_strides: tuple[int, int, int] = (8, 16, 32)
    size_divisibility: int = 32

    def __init__(
        self,
        *,
        depths: Sequence[int] = (3, 3, 27, 3),
        dims: Sequence[int] = (192, 384, 768, 1536),
        in_channels: int = 3,
    ) -> None:
        """Args:
        depths: blocks per stage (4 entries); ConvNeXt-L (3, 3, 27, 3).
        dims: channels per stage (4 entries); ConvNeXt-L (192, 384, 768, 1536).
        in_channels: 3 for images, 4 for UNINEXT's template backbone.
        """
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims need 4 entries, got {depths} and {dims}")
        # Stem: 4x4/4 patchify conv + LN; then LN + 2x2/2 conv before each later stage.
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4),
                    EmbeddingLayerNorm(dims[0], channels_first=True),
                )
            ]
            + [
                nn.Sequential(
                    EmbeddingLayerNorm(dims[i], channels_first=True),
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2),
                )
                for i in range(3)
            ]
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*(_Block(dim) for _ in range(depth)))
            for depth, dim in zip(depths, dims, strict=True)
        )
        for i in range(1, 4):
            self.add_module(f"norm{i}", EmbeddingLayerNorm(dims[i], channels_first=True))
        self.out_channels = (dims[1], dims[2], dims[3])

    def forward(self, x: Tensor) -> list[Tensor]:
        """Args:
            x: (B, C, H, W) normalised images, H and W multiples of 32.

        Returns:
            [res3, res4, res5]: (B, dims[i], H / s, W / s) for s = 8, 16, 32.
        """
        outputs = []
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))  # (B, dims[i], H / 4 / 2^i, ...)
            if i > 0:
                outputs.append(getattr(self, f"norm{i}")(x))
        return outputs
