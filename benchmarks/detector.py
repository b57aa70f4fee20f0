"""Detector forward latency on CPU: unipercept's Deformable DETR against transformers'.

    python benchmarks/detector.py [--json PATH] [--repeats 5] [--height 480 --width 640]

Both models have the same architecture and the same weights: transformers'
``DeformableDetrForObjectDetection`` is built from a config (ResNet-50 AutoBackbone, random
init, two-stage, iterative box refinement, 300 queries) and unipercept's detector is converted
from it with ``from_hf_deformable_detr``, so the comparison is of implementations only; their
outputs are checked to agree first. One image per forward, ``torch.no_grad()``, eval mode.
Calls are interleaved in one process, each timed call right after the same call untimed;
medians over rounds. unipercept runs twice: with its compiled deformable-attention kernel and
with the PyTorch reference forced, to show where the difference comes from.
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

import torch

from unipercept.data.io import write_text_atomic


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args(argv)

    from unipercept.ops import cpu_isa, msda_backend
    from unipercept.structures import ImageBatch

    hf, ours = build_models()
    image = torch.randn(3, args.height, args.width, generator=torch.Generator().manual_seed(1))
    batch = ImageBatch.from_images([image])  # padded to a multiple of 32, as unipercept runs
    pixels, mask = batch.tensor, batch.valid.long()  # transformers gets the same padded input

    def run_hf():
        with torch.no_grad():
            return hf(pixel_values=pixels, pixel_mask=mask)

    def run_ours(force_reference: bool) -> Callable[[], object]:
        def run():
            if force_reference:
                os.environ["UNIPERCEPT_MSDA_FORCE_PYTORCH"] = "1"
            try:
                with torch.no_grad():
                    return ours(batch)
            finally:
                os.environ.pop("UNIPERCEPT_MSDA_FORCE_PYTORCH", None)

        return run

    implementations = {"transformers": run_hf, "unipercept-pytorch-attention": run_ours(True)}
    if msda_backend("cpu") == "cpu":
        implementations = {"unipercept": run_ours(False), **implementations}
    reference, candidate = run_hf(), next(iter(implementations.values()))()
    difference = (candidate.logits[-1] - reference.logits).abs().max().item()
    if difference > 1e-3:
        raise SystemExit(f"outputs disagree (max logit difference {difference}); not timing")

    times: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(args.repeats):
        for name, run in implementations.items():
            run()  # untimed: each timed call starts from its own warm caches
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1e3)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"# {args.height}x{args.width}, batch 1, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, CPU kernel {cpu_isa()}, median of {args.repeats} interleaved "
        f"rounds; max logit difference {difference:.1e}"
    )
    for name, value in medians.items():
        print(f"{name:<30}{value:>10.1f} ms/image{medians['transformers'] / value:>10.2f}x")
    if args.json:
        records = [
            {
                "implementation": name,
                "ms_per_image": value,
                "speedup_vs_transformers": medians["transformers"] / value,
                "height": args.height,
                "width": args.width,
                "repeats": args.repeats,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            }
            for name, value in medians.items()
        ]
        write_text_atomic(args.json, json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
