"""Process-group set-up for runs launched by ``torchrun``; no launcher of our own.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
in every process; :func:`init_distributed` reads them and joins the group with the ``env://``
rendezvous, which covers multi-node runs too. Without them the run is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run.

    Attributes:
        rank: Global rank of this process.
        world_size: Number of processes in the run.
        local_rank: Rank of this process on its node, which selects its GPU.
        device: The device this process computes on.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that logs and saves checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process, so collectives are needed."""
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistributedContext:
    """Read ``torchrun``'s environment and initialise ``torch.distributed`` when launched by it.

    The backend is NCCL on CUDA devices and Gloo otherwise. Without ``WORLD_SIZE`` and ``RANK``
    in the environment, nothing is initialised and a single-process context is returned.

    Args:
        device: ``"cpu"``, ``"cuda"`` (this process's ``cuda:<LOCAL_RANK>``) or ``"cuda:<n>"``;
            by default ``cuda:<LOCAL_RANK>`` when CUDA is available, else CPU.

    Returns:
        The context of this process.

    Raises:
        ValueError: ``WORLD_SIZE`` set without ``RANK`` or ``LOCAL_RANK`` (or ``RANK`` without
            ``WORLD_SIZE``), a non-integer or out-of-range value, or a CUDA device asked for
            without CUDA.
    """
    present = [name for name in ("RANK", "WORLD_SIZE") if name in os.environ]
    if len(present) == 1:
        missing = "RANK" if present == ["WORLD_SIZE"] else "WORLD_SIZE"
        raise ValueError(f"{present[0]} is set but {missing} is not; launch with torchrun")
    if not present:
        return DistributedContext(0, 1, 0, _resolve_device(device, local_rank=0))

    rank = _env_int("RANK")
    world_size = _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world_size})")
    if local_rank < 0:
        raise ValueError(f"LOCAL_RANK must be non-negative, got {local_rank}")
    resolved = _resolve_device(device, local_rank=local_rank)
    cuda = resolved.type == "cuda"
    if cuda:
        # Collectives and CUDA calls without an explicit device then use this process's GPU.
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
            # Binding NCCL to the device up front avoids it guessing the GPU from the rank.
            device_id=resolved if cuda else None,
        )
    return DistributedContext(rank, world_size, local_rank, resolved)


def barrier(context: DistributedContext) -> None:
    """Wait until every process reaches this point (no-op in a single process).

    Args:
        context: The context from :func:`init_distributed`.
    """
    if context.distributed:
        dist.barrier()


def reduce_mean(tensor: Tensor, context: DistributedContext) -> Tensor:
    """Average a tensor over all processes, for logging losses and metrics.

    Args:
        tensor: The local value; it is neither modified nor part of the autograd graph.
        context: The context from :func:`init_distributed`.

    Returns:
        The mean over processes (a floating tensor) on the device of ``tensor``, or ``tensor``
        itself in a single process.
    """
    if not context.distributed:
        return tensor
    # A copy, since all_reduce works in place; on the context's device, since NCCL only
    # reduces CUDA tensors.
    reduced = tensor.detach().to(context.device, copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return (reduced / context.world_size).to(tensor.device)


def broadcast_object(obj: Any, context: DistributedContext, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every process.

    Args:
        obj: The object on rank ``src``; ignored on the other ranks.
        context: The context from :func:`init_distributed`.
        src: The sending rank.

    Returns:
        Rank ``src``'s object, on every process.

    Raises:
        ValueError: ``src`` is not a rank of the run.
    """
    if not 0 <= src < context.world_size:
        raise ValueError(f"src must be in [0, {context.world_size}), got {src}")
    if not context.distributed:
        return obj
    payload = [obj if context.rank == src else None]
    dist.broadcast_object_list(payload, src=src, device=context.device)
    return payload[0]


def cleanup(context: DistributedContext) -> None:
    """Destroy the process group if one was initialised.

    Args:
        context: The context from :func:`init_distributed`.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _env_int(name: str) -> int:
    """Read an integer environment variable set by ``torchrun``."""
    if name not in os.environ:
        raise ValueError(f"{name} is not set although WORLD_SIZE is; launch with torchrun")
    try:
        return int(os.environ[name])
    except ValueError as error:
        raise ValueError(f"{name} must be an integer, got {os.environ[name]!r}") from error


def _resolve_device(device: str | None, *, local_rank: int) -> torch.device:
    """Pick this process's device, checking that CUDA exists when asked for."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
    return resolved
