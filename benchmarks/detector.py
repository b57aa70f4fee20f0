"""Detector forward latency on CPU: unipercept's Deformable DETR against transformers', in
float32 and under reduced-precision autocast, with how far the answers agree.

    python benchmarks/detector.py [--json PATH] [--repeats 5] [--height 480 --width 640]
                                  [--dtypes float32 bfloat16] [--malloc system|keep]

Both models have the same architecture and the same weights: transformers'
``DeformableDetrForObjectDetection`` is built from a config (ResNet-50 AutoBackbone, random
init, two-stage, iterative box refinement, 300 queries) and unipercept's detector is converted
from it with ``from_hf_deformable_detr``, so the comparison is of implementations only; their
float32 outputs are checked to agree first. One image per forward, ``torch.no_grad()``, eval
mode. Calls are interleaved in one process, each timed call right after the same call untimed;
medians over rounds. In float32 unipercept also runs with the PyTorch reference of the
deformable attention forced, and in every dtype with ``nn.Linear`` called as it is
(``unipercept-plain-linear``: ``UNIPERCEPT_LINEAR_FORCE_PYTORCH=1``, no oneDNN fused linear, see
:mod:`unipercept.ops.linear`), to show where the difference comes from. ``--dtypes bfloat16``
adds both models under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (weights stay float32).

Answers: the top ``--top-k`` (query, class) detections by score, as transformers'
``post_process_object_detection`` takes them, compared with the float32 transformers model's
(and a reduced-precision run also with its own model's float32 answer): the fraction found again
with the same class at box IoU >= 0.95, the largest score drift over those, and the same for the
top 10. ``faults`` are the page faults of one forward (fresh pages from the kernel);
``--malloc keep`` calls :func:`unipercept.allocator.keep_freed_memory` first, as the command
line does (see ``benchmarks/allocator.py`` for a comparison in separate processes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from agreement import agreement
from record import environment, minor_faults

from unipercept.data.io import write_text_atomic
from unipercept.ops.linear import FORCE_PYTORCH as LINEAR_FORCE_PYTORCH
from unipercept.precision import autocast, parse_dtype

SHORT = {torch.float32: "", torch.bfloat16: "-bf16", torch.float16: "-fp16"}


def build_models(num_labels: int = 91):
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    from unipercept.modeling.hf_import import from_hf_deformable_detr

    torch.manual_seed(0)
    config = DeformableDetrConfig(
        backbone_config=ResNetConfig(out_features=["stage2", "stage3", "stage4"]),
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        two_stage=True,
        with_box_refine=True,
        num_queries=300,
        two_stage_num_proposals=300,
        num_labels=num_labels,
    )
    hf = DeformableDetrForObjectDetection(config).eval()
    return hf, from_hf_deformable_detr(hf).eval()


def top_detections(logits: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], k: int):
    """The k best (query, class) pairs of image 0: boxes xyxy in pixels of ``size``."""
    from unipercept.structures.boxes import box_convert

    scores = logits[0].float().sigmoid()  # (Q, K)
    best, index = scores.flatten().topk(k)
    queries = index // scores.shape[1]
    height, width = size
    xyxy = box_convert(boxes[0].float()[queries], "cxcywh", "xyxy")
    return SimpleNamespace(
        boxes=xyxy * torch.tensor([width, height, width, height]),
        scores=best,
        labels=index % scores.shape[1],
    )


def _agreement_fields(reference, candidate, prefix: str, top: int) -> dict:
    def first(answer, count):
        return SimpleNamespace(
            boxes=answer.boxes[:count], scores=answer.scores[:count], labels=answer.labels[:count]
        )

    whole = agreement(reference, candidate)
    leading = agreement(first(reference, 10), first(candidate, 10))
    return {
        f"{prefix}top{top}_matched": whole.matched,
        f"{prefix}top{top}_max_score_drift": whole.max_score_drift,
        f"{prefix}top{top}_max_box_px": whole.max_box_px,
        f"{prefix}top10_matched": leading.matched,
        f"{prefix}top10_max_score_drift": leading.max_score_drift,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--malloc", choices=("system", "keep"), default="system")
    parser.add_argument("--top-k", type=int, default=100)
    args = parser.parse_args(argv)
    dtypes = [parse_dtype(name) for name in args.dtypes]
    if torch.float32 not in dtypes:
        dtypes.insert(0, torch.float32)  # the reference every ratio and agreement is against
    if args.malloc == "keep":
        from unipercept.allocator import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("--malloc keep: the malloc settings did not apply here")

    from unipercept.ops import cpu_isa, msda_backend
    from unipercept.structures import ImageBatch

    hf, ours = build_models()
    image = torch.randn(3, args.height, args.width, generator=torch.Generator().manual_seed(1))
    batch = ImageBatch.from_images([image])  # padded to a multiple of 32, as unipercept runs
    pixels, mask = batch.tensor, batch.valid.long()  # transformers gets the same padded input
    size = (args.height, args.width)

    def run_hf(dtype: torch.dtype) -> Callable[[], object]:
        def run():
            with torch.no_grad(), autocast("cpu", dtype):
                output = hf(pixel_values=pixels, pixel_mask=mask)
            return top_detections(output.logits, output.pred_boxes, size, args.top_k)

        return run

    def run_ours(dtype: torch.dtype, force: str | None = None) -> Callable[[], object]:
        """unipercept's forward; ``force`` names a switch to PyTorch's own code for one part."""

        def run():
            if force is not None:
                os.environ[force] = "1"
            try:
                with torch.no_grad(), autocast("cpu", dtype):
                    output = ours(batch)
            finally:
                if force is not None:
                    os.environ.pop(force, None)
            return top_detections(output.logits[-1], output.boxes[-1], size, args.top_k)

        return run

    compiled = msda_backend("cpu") == "cpu"
    implementations: dict[str, tuple[torch.dtype, Callable[[], object]]] = {}
    for dtype in dtypes:
        if compiled:
            implementations[f"unipercept{SHORT[dtype]}"] = (dtype, run_ours(dtype))
        implementations[f"transformers{SHORT[dtype]}"] = (dtype, run_hf(dtype))
        if dtype == torch.float32:
            attention = run_ours(dtype, "UNIPERCEPT_MSDA_FORCE_PYTORCH")
            implementations["unipercept-pytorch-attention"] = (dtype, attention)
        if compiled:
            plain = run_ours(dtype, LINEAR_FORCE_PYTORCH)
            implementations[f"unipercept-plain-linear{SHORT[dtype]}"] = (dtype, plain)

    with torch.no_grad():
        reference = hf(pixel_values=pixels, pixel_mask=mask)
        ours_output = ours(batch)
    difference = (ours_output.logits[-1] - reference.logits).abs().max().item()
    if difference > 1e-3:
        raise SystemExit(f"outputs disagree (max logit difference {difference}); not timing")
    answers = {name: run() for name, (_, run) in implementations.items()}

    times: dict[str, list[float]] = {name: [] for name in implementations}
    faults: dict[str, list[int]] = {name: [] for name in implementations}
    for _ in range(args.repeats):
        for name, (_, run) in implementations.items():
            run()  # untimed: each timed call starts from its own warm caches
            before_faults = minor_faults()
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
            faults[name].append(minor_faults() - before_faults)
    medians = {name: statistics.median(t) for name, t in times.items()}
    baseline = medians["transformers"]
    records = []
    for name, (dtype, _) in implementations.items():
        same_dtype = medians[f"transformers{SHORT[dtype]}"]
        record = {
            "implementation": name,
            "dtype": str(dtype).removeprefix("torch."),
            "ms_per_image": medians[name],
            "speedup_vs_transformers": baseline / medians[name],
            "speedup_vs_transformers_same_dtype": same_dtype / medians[name],
            "faults_per_forward": statistics.median(faults[name]),
            **_agreement_fields(answers["transformers"], answers[name], "", args.top_k),
        }
        own_float32 = name.replace(SHORT[dtype], "") if dtype != torch.float32 else None
        if own_float32 in answers:
            record.update(
                _agreement_fields(answers[own_float32], answers[name], "own_fp32_", args.top_k)
            )
        records.append(record)

    glibc = [f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_")]
    malloc = " ".join([args.malloc, *glibc])
    sys.stdout.write(
        f"# {args.height}x{args.width}, batch 1, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, CPU kernel {cpu_isa()}, malloc {malloc}, median of "
        f"{args.repeats} interleaved rounds; max logit difference {difference:.1e}\n"
        f"| implementation | ms/image | vs transformers fp32 | vs transformers same dtype | "
        f"faults/forward | top-{args.top_k} matched (vs transformers fp32 / own fp32) | "
        "max score drift | top-10 matched |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for r in records:
        own = r.get(f"own_fp32_top{args.top_k}_matched")
        own_text = "" if own is None else f" / {own:.0%}"
        sys.stdout.write(
            f"| {r['implementation']} | {r['ms_per_image']:.0f} | "
            f"{r['speedup_vs_transformers']:.2f}x | {r['speedup_vs_transformers_same_dtype']:.2f}x"
            f" | {r['faults_per_forward']:.0f} | {r[f'top{args.top_k}_matched']:.0%}{own_text} | "
            f"{r[f'top{args.top_k}_max_score_drift']:.1e} | {r['top10_matched']:.0%} |\n"
        )
    if args.json:
        common = {
            "height": args.height,
            "width": args.width,
            "repeats": args.repeats,
            "top_k": args.top_k,
            "max_logit_difference_fp32": difference,
            "cpu_kernel": cpu_isa(),
            **environment(),
        }
        payload = [{**record, **common} for record in records]
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
