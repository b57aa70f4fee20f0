"""Training engine: checkpoints, optimizer groups and schedules, and torchrun set-up."""

from __future__ import annotations

from unipercept.engine.checkpoint import (
    CheckpointError,
    check_replaceable,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    load_newest_checkpoint,
    save_checkpoint,
    weights_file,
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
from unipercept.engine.rng import capture_rng_state, restore_rng_state

__all__ = [
    "CheckpointError",
    "DistributedContext",
    "barrier",
    "broadcast_object",
    "capture_rng_state",
    "check_replaceable",
    "cleanup",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "load_newest_checkpoint",
    "parameter_groups",
    "reduce_mean",
    "restore_rng_state",
    "save_checkpoint",
    "warmup_schedule",
    "weights_file",
]
