"""Training engine: checkpoints, optimizer groups and schedules, and torchrun set-up."""

from __future__ import annotations

from unipercept.engine.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    restore_rng_state,
    save_checkpoint,
)
from unipercept.engine.distributed import (
    DistributedContext,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    reduce_mean,
)
from unipercept.engine.optim import parameter_groups, warmup_schedule

__all__ = [
    "DistributedContext",
    "barrier",
    "broadcast_object",
    "capture_rng_state",
    "cleanup",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "parameter_groups",
    "reduce_mean",
    "restore_rng_state",
    "save_checkpoint",
    "warmup_schedule",
]
