"""Multi-scale deformable attention: forward and forward+backward time of every implementation.

    python benchmarks/msda.py [--json PATH] [--device cpu|cuda] [--repeats 7]
                              [--shapes enc-480x640 dec-300q ...] [--locations model|uniform]

Shapes (batch 1, 8 heads, head dim 32, 4 levels at strides 8/16/32/64, 4 points):
``enc-HxW`` has one query per value position of an HxW image (an encoder layer); ``dec-Nq``
has N queries over the levels of an 800x1333 image (a decoder layer).

Implementations, run interleaved in one process (one call of each per round, medians over
rounds; each timed call right after the same call untimed, so no implementation inherits
another's caches): this op's compiled kernel on the device (each CPU instruction-set variant this
machine runs, or CUDA), this op's PyTorch reference, transformers' ``MultiScaleDeformableAttention``
(the grid_sample path), ``torch-ms-deform-attn`` when installed, and on CUDA a gather floor:
a bare gather of the four corner rows of every sample, the memory traffic no kernel avoids.

Sampling locations follow the model by default: an encoder query samples within a few pixels
of its own position, a decoder query around a random reference point. ``--locations uniform``
scatters them over whole maps instead (a worst case for caches).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from unipercept.data.io import write_text_atomic
from unipercept.ops import cpu_isa, ms_deform_attn, ms_deform_attn_pytorch, msda_backend

HEADS, HEAD_DIM, LEVELS, POINTS = 8, 32, 4, 4
STRIDES = (8, 16, 32, 64)
SHAPES = ("enc-320x320", "enc-480x640", "enc-800x1333", "dec-300q", "dec-900q")


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    return [(math.ceil(height / s), math.ceil(width / s)) for s in STRIDES]


def make_inputs(name: str, device: torch.device, dtype: torch.dtype, locations: str, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    if name.startswith("enc-"):
        height, width = (int(v) for v in name[4:].split("x"))
        shapes = level_shapes(height, width)
    else:
        shapes = level_shapes(800, 1333)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
    num_values = int(sizes.sum())
    if name.startswith("enc-"):
        # Each query's reference point is the centre of its own pixel, on its own level.
        reference = torch.cat(
            [
                torch.stack(
                    torch.meshgrid(
                        (torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h, indexing="xy"
                    ),
                    dim=-1,
                ).reshape(-1, 2)
                for h, w in shapes
            ]
        )  # (Q, 2)
    else:
        reference = torch.rand(int(name[4:-1]), 2, generator=generator)  # (Q, 2)
    queries = reference.shape[0]
    if locations == "model":
        # Offsets of a few pixels on each level, as trained Deformable-DETR layers predict.
        level_size = spatial_shapes.flip(1).to(torch.float32)  # (L, 2) as (W, H)
        offsets = torch.randn(1, queries, HEADS, LEVELS, POINTS, 2, generator=generator) * 2.0
        sampling = reference[None, :, None, None, None, :] + offsets / level_size[:, None, :]
    else:
        sampling = torch.rand(1, queries, HEADS, LEVELS, POINTS, 2, generator=generator)
    weights = torch.rand(1, queries, HEADS, LEVELS, POINTS, generator=generator).softmax(-1)
    value = torch.randn(1, num_values, HEADS, HEAD_DIM, generator=generator)
    grad = torch.randn(1, queries, HEADS * HEAD_DIM, generator=generator)
    to = {"device": device}
    return (
        value.to(**to, dtype=dtype),
        spatial_shapes.to(**to),
        level_start_index.to(**to),
        sampling.to(**to, dtype=torch.float32 if dtype != torch.float64 else dtype).contiguous(),
        weights.to(**to, dtype=torch.float32 if dtype != torch.float64 else dtype).contiguous(),
        grad.to(**to, dtype=dtype),
    )


def implementations(device: torch.device) -> dict[str, Callable]:
    """name -> fn(value, spatial_shapes, level_start_index, locations, weights)."""
    impls: dict[str, Callable] = {}
    backend = msda_backend(device)
    if backend == "cpu":
        for isa in ("avx512", "avx2", "base"):
            if torch.ops.unipercept.msda_set_cpu_isa(isa):
                impls[f"unipercept-cpu-{isa}"] = _with_isa(isa)
        torch.ops.unipercept.msda_set_cpu_isa(cpu_isa_best())
    elif backend == "cuda":
        impls["unipercept-cuda"] = ms_deform_attn
    impls["unipercept-pytorch"] = lambda v, s, i, loc, w: ms_deform_attn_pytorch(
        v, s, loc.to(v.dtype), w.to(v.dtype)
    )
    try:
        from transformers.models.deformable_detr.modeling_deformable_detr import (
            MultiScaleDeformableAttention,
        )

        module = MultiScaleDeformableAttention()

        def transformers_reference(v, s, i, loc, w):
            return module(
                v, s, [tuple(x) for x in s.tolist()], i, loc.to(v.dtype), w.to(v.dtype), 64
            )

        impls["transformers-pytorch"] = transformers_reference
    except ImportError:
        pass
    try:
        from torch_ms_deform_attn import ms_deform_attn as peer

        impls["torch-ms-deform-attn"] = lambda v, s, i, loc, w: peer(
            v, s, i, loc.to(v.dtype), w.to(v.dtype)
        )
    except ImportError:
        pass
    return impls


_BEST_ISA: list[str] = []


def cpu_isa_best() -> str:
    if not _BEST_ISA:
        _BEST_ISA.append(cpu_isa() or "base")
    return _BEST_ISA[0]


def _with_isa(isa: str) -> Callable:
    def run(v, s, i, loc, w):
        torch.ops.unipercept.msda_set_cpu_isa(isa)
        return ms_deform_attn(v, s, i, loc, w, check_contents=False)

    return run


def gather_floor(value, spatial_shapes, level_start_index, locations, weights):
    """Reads the four corner rows of every sample (the traffic any kernel pays), no arithmetic."""
    batch, num_values, heads, head_dim = value.shape
    queries = locations.shape[1]
    rows = value.view(batch * num_values * heads, head_dim)
    count = queries * heads * LEVELS * POINTS * 4
    index = getattr(gather_floor, "index", None)
    if index is None or index.numel() != count or index.device != value.device:
        index = torch.randint(0, rows.shape[0], (count,), device=value.device)
        gather_floor.index = index
    return rows.index_select(0, index).view(queries, -1).sum(1)


def timer(device: torch.device) -> Callable[[Callable], float]:
    if device.type == "cuda":

        def measure(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
    else:

        def measure(fn):
            begin = time.perf_counter()
            fn()
            return (time.perf_counter() - begin) * 1e3

    return measure


def forward(fn: Callable, inputs: tuple) -> None:
    value, spatial, starts, sampling, weights, _ = inputs
    with torch.no_grad():
        fn(value, spatial, starts, sampling, weights)


def forward_backward(fn: Callable, inputs: tuple) -> None:
    value, spatial, starts, sampling, weights, grad = inputs
    leaves = [t.detach().requires_grad_() for t in (value, sampling, weights)]
    out = fn(leaves[0], spatial, starts, leaves[1], leaves[2])
    out.backward(grad if out.dim() == grad.dim() else torch.ones_like(out))


def run(shapes: list[str], device: torch.device, dtype: torch.dtype, repeats: int, locations: str):
    measure = timer(device)
    impls = implementations(device)
    if device.type == "cuda":
        impls["gather-floor"] = gather_floor
    records = []
    for shape in shapes:
        inputs = make_inputs(shape, device, dtype, locations)
        times = {name: {"fwd": [], "fwd_bwd": []} for name in impls}
        for _ in range(repeats):
            for name, fn in impls.items():
                # Each timed call follows the same call untimed: otherwise an implementation
                # inherits the caches the previous one left (a backward evicts the value map,
                # which made whichever ran next several times slower).
                for kind, step in (("fwd", forward), ("fwd_bwd", forward_backward)):
                    step(fn, inputs)
                    times[name][kind].append(measure(partial(step, fn, inputs)))
        for name in impls:
            records.append(
                {
                    "shape": shape,
                    "implementation": name,
                    "fwd_ms": statistics.median(times[name]["fwd"]),
                    "fwd_bwd_ms": statistics.median(times[name]["fwd_bwd"]),
                    "queries": inputs[3].shape[1],
                    "values": inputs[0].shape[1],
                }
            )
    return records


def print_table(records: list[dict], peer: str) -> None:
    print(
        f"{'shape':<14}{'implementation':<24}{'fwd ms':>10}{'fwd+bwd ms':>12}"
        f"{'fwd vs ' + peer:>28}{'f+b vs ' + peer:>28}"
    )
    by_shape: dict[str, dict[str, dict]] = {}
    for record in records:
        by_shape.setdefault(record["shape"], {})[record["implementation"]] = record
    for shape, rows in by_shape.items():
        reference = rows.get(peer)
        for name, record in rows.items():
            ratio_f = ratio_b = ""
            if reference:
                ratio_f = f"{reference['fwd_ms'] / record['fwd_ms']:.2f}x"
                ratio_b = f"{reference['fwd_bwd_ms'] / record['fwd_bwd_ms']:.2f}x"
            print(
                f"{shape:<14}{name:<24}{record['fwd_ms']:>10.2f}{record['fwd_bwd_ms']:>12.2f}"
                f"{ratio_f:>28}{ratio_b:>28}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write one record per (shape, implementation)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--locations", default="model", choices=("model", "uniform"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    records = run(args.shapes, device, dtype, args.repeats, args.locations)
    peer = (
        "torch-ms-deform-attn"
        if any(r["implementation"] == "torch-ms-deform-attn" for r in records)
        else "transformers-pytorch"
    )
    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.dtype}, locations={args.locations}, "
        f"median of {args.repeats} interleaved rounds"
    )
    print_table(records, peer)
    if args.json:
        meta = {
            "device": str(device),
            "dtype": args.dtype,
            "locations": args.locations,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "repeats": args.repeats,
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        }
        payload = [{**meta, **record} for record in records]
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
