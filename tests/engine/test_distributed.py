from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unipercept.engine.distributed import (
    DistributedContext,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    reduce_mean,
)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_torchrun(clean_env):
    context = init_distributed("cpu")
    assert context == DistributedContext(0, 1, 0, torch.device("cpu"))
    assert context.is_main and not context.distributed
    assert not dist.is_initialized()
    value = torch.tensor([1.0, 3.0])
    assert reduce_mean(value, context) is value
    assert broadcast_object({"a": 1}, context) == {"a": 1}
    barrier(context)
    cleanup(context)


@pytest.mark.parametrize(
    ("env", "word"),
    [
        ({"WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "2", "RANK": "0"}, "LOCAL_RANK"),
        ({"WORLD_SIZE": "2", "RANK": "two", "LOCAL_RANK": "0"}, "RANK"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "RANK"),
    ],
)
def test_bad_environment_is_rejected(clean_env, env, word):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=word):
        init_distributed("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_rejected(clean_env):
    with pytest.raises(ValueError, match="CUDA"):
        init_distributed("cuda")


def _worker(local_rank: int, port: int) -> None:
    # Spawned processes: each sets the variables torchrun would give it.
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(local_rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(local_rank),
    )
    context = init_distributed("cpu")
    try:
        assert context.rank == local_rank and context.world_size == 2 and context.distributed
        assert dist.get_backend() == "gloo"
        value = torch.tensor([float(local_rank), 10.0 * local_rank])
        mean = reduce_mean(value, context)
        assert torch.equal(mean, torch.tensor([0.5, 5.0]))
        assert torch.equal(value, torch.tensor([float(local_rank), 10.0 * local_rank]))
        message = {"seed": 1234, "names": ["a", "b"]} if context.is_main else None
        assert broadcast_object(message, context) == {"seed": 1234, "names": ["a", "b"]}
        assert broadcast_object(f"from {local_rank}", context, src=1) == "from 1"
        barrier(context)
    finally:
        cleanup(context)
    assert not dist.is_initialized()


def test_two_gloo_processes(clean_env):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port,), nprocs=2, join=True)
