"""Batch norm with fixed statistics and affine parameters, as detection backbones use it."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are buffers, never updated.

    Detection trains with a few images per GPU, far too few for batch statistics; the
    pretrained ones are kept. ``eps`` is added before the square root, as torchvision's and
    transformers' versions do.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Checkpoints of a trainable BatchNorm2d carry this counter; it means nothing here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale  # (C,)
        # In x's dtype: under autocast the convolutions give bfloat16 maps, which float32
        # buffers would promote to float32 (twice the memory traffic, and a cast back at the
        # next convolution).
        scale = scale.to(x.dtype).reshape(1, -1, 1, 1)
        shift = shift.to(x.dtype).reshape(1, -1, 1, 1)
        if x.dtype == torch.float32:
            return x * scale + shift  # as transformers and torchvision compute it
        # Half precision: one pass over the map instead of two, rounded once (about twice as
        # fast on CPU).
        return torch.addcmul(shift, x, scale)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _is_batch_norm_like(module: nn.Module) -> bool:
    if isinstance(module, nn.BatchNorm2d):
        return True
    # transformers' DeformableDetrFrozenBatchNorm2d and torchvision's FrozenBatchNorm2d.
    return type(module).__name__.endswith("FrozenBatchNorm2d") and all(
        hasattr(module, name) for name in ("weight", "bias", "running_mean", "running_var")
    )


@torch.no_grad()
def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replaces every BatchNorm2d (or another library's frozen batch norm) inside ``module``
    with :class:`FrozenBatchNorm2d` carrying the same statistics; returns ``module``."""
    for name, child in module.named_children():
        if _is_batch_norm_like(child):
            frozen = FrozenBatchNorm2d(child.weight.shape[0], eps=getattr(child, "eps", 1e-5))
            if child.weight.device.type != "meta":
                for buffer in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, buffer).copy_(getattr(child, buffer))
            frozen.to(child.weight.device)
            setattr(module, name, frozen)
        else:
            freeze_batch_norm(child)
    return module
