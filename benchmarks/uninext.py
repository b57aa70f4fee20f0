"""Forward latency, peak memory and bf16 fidelity of the full-size UNINEXT R50 on CPU.

    python benchmarks/uninext.py [--keys PATH | --checkpoint PTH | --tiny] [--repeats 3]
        [--json PATH] [--no-memory] [--workloads video sot image prompt template]

The model is UNINEXT's video (stage-3) R50 architecture, read from the key manifest of its
released checkpoint (``--keys``; default ``../shared/fixtures/uninext_r50_tiny/keys/r50.txt``
beside the checkout) and built with random weights (seed 0): the timings are the real model's,
the detections are not (see below). ``--checkpoint`` takes architecture and weights from a
UNINEXT ``.pth`` instead; ``--tiny`` builds a tiny architecture (no manifest needed) at small
input sizes: what the test suite runs.

Workloads, one image per forward, ``torch.no_grad()``, eval mode, inputs from
``UninextPreprocessor`` on a smooth synthetic frame:

- ``video``: a 480x854 frame against a 5-name category prompt (``pooled=False``) with masks and
  re-id embeddings: a VIS/MOTS frame.
- ``sot``: the SOT search step on a 480x854 frame: the first template concatenated with itself
  (UNINEXT's online update starts so; 2 x 1024 tokens), ``pooled=True``, no masks (SOT needs
  boxes only).
- ``image``: an 800x1333 image against the same prompt, with masks: detection / instance
  segmentation. The prompt length does not change the cost (UNINEXT pads every prompt to 256
  tokens).
- ``prompt``: the BERT text encoder on the caption (once per prompt).
- ``template``: cropping and encoding the SOT template (once per target; then at most every
  200 frames).

Variants: ``fp32`` (the compiled deformable-attention op the machine selects), ``fp32-pytorch-
msda`` (``UNIPERCEPT_MSDA_FORCE_PYTORCH=1``, which the op reads on every call outside
``torch.compile``), ``fp32-plain-linear`` (``UNIPERCEPT_LINEAR_FORCE_PYTORCH=1``: the
transformer's and the fusion block's ``nn.Linear`` layers called as they are instead of as
oneDNN's fused linear, :mod:`unipercept.ops.linear`) and ``bf16`` (the compiled op under
``torch.autocast("cpu", dtype=torch.bfloat16)``; text and template tokens are computed once in
float32 and given to both). All variants run in one process: one untimed call each, then
``--repeats`` rounds with one timed call of each, interleaved; medians. A forward streams
gigabytes through memory, so no call inherits useful caches from the previous one. Stage times
come from forward hooks (backbone, the fusion block, the deformable encoder without it, decoder,
mask branch, re-id).

Answers: every variant is compared with ``fp32`` on the same input. Decoder query i starts from
the encoder's i-th best-scored position (its proposal box) and the i-th learned content
embedding, so the ranking decides which proposal each query refines: the table gives the
largest objectness difference against the median gap between consecutive ranked objectness
logits, how many query slots keep their proposal (leading and in all), the largest class-logit
(per category, the mean over its tokens) and box (input pixels) differences over all queries
and over the slots that kept their proposal, and how many of the top-10 detections (NMS 0.7,
UNINEXT's scores) are the same (query, class) pairs. With random weights the scores are nearly
flat (the 10th-11th gap is given): a trained model's confident detections stand further apart.

Peak memory: each (workload, variant) runs again in its own child process, which builds the
model, runs one untimed forward, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``)
and reports ``VmHWM`` over one more forward: the most resident memory the process held during
a steady-state forward, weights (about 0.8 GB) and libraries included; ``before`` is the
resident set just before it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KEYS = REPO_ROOT.parent / "shared" / "fixtures" / "uninext_r50_tiny" / "keys" / "r50.txt"
FORCE_PYTORCH_ENV = "UNIPERCEPT_MSDA_FORCE_PYTORCH"
LINEAR_FORCE_PYTORCH_ENV = "UNIPERCEPT_LINEAR_FORCE_PYTORCH"
NAMES = ("person", "car", "dog", "bicycle", "traffic light")
VARIANTS = ("fp32", "fp32-pytorch-msda", "fp32-plain-linear", "bf16")
# The variants that change the transformer only: run on the workloads that have one.
TRANSFORMER_VARIANTS = ("fp32-pytorch-msda", "fp32-plain-linear")
MSDA_WORKLOADS = ("video", "sot", "image")
WORKLOADS = (*MSDA_WORKLOADS, "prompt", "template")
SIZES = {
    "full": {"video": (480, 854), "image": (800, 1333)},
    "tiny": {"video": (96, 160), "image": (128, 224)},
}
TOP_K = 10
# A small UNINEXT of the same structure (the reference fixture's sizes) for smoke tests.
TINY_RESNET = {
    "kind": "resnet",
    "depth": 50,
    "stem_channels": 8,
    "res2_channels": 16,
    "width_per_group": 8,
    "num_groups": 1,
}
TINY = {
    "backbone": {**TINY_RESNET, "in_channels": 3},
    "template_backbone": {**TINY_RESNET, "in_channels": 4},
    "text": {
        "vocab_size": 30522,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    },
    "encoder_layers": 2,
    "decoder_layers": 2,
    "ffn_dim": 32,
    "encoder_points": 2,
    "decoder_points": 2,
    "num_queries": 30,
    "fusion_dim": 64,
    "reid_layers": 1,
    "reid_points": 2,
    "template_size": 64,
}


def build_model(args: argparse.Namespace) -> Any:
    """The model: the tiny architecture, the manifest's with random weights (seed 0), or a
    checkpoint's architecture with its weights."""
    import torch

    from unipercept.modeling.uninext.build import architecture_from_shapes, build_uninext
    from unipercept.modeling.uninext.checkpoint import read_uninext_checkpoint, to_our_names

    torch.manual_seed(0)
    if args.tiny:
        return build_uninext(**TINY)
    if args.checkpoint:
        state = read_uninext_checkpoint(args.checkpoint)
        model = build_uninext(**architecture_from_shapes({k: v.shape for k, v in state.items()}))
        model.load_state_dict(to_our_names(state, source=str(args.checkpoint)), strict=True)
        return model.eval()
    shapes = {}
    for line in args.keys.read_text().splitlines():
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(n) for n in shape.strip("()").split(",") if n.strip())
    return build_uninext(**architecture_from_shapes(shapes))


def synthetic_frame(height: int, width: int, seed: int) -> Any:
    """(3, H, W) uint8: seeded noise at 1/16 resolution, bicubically enlarged (smooth, with
    edges and texture at several scales, unlike white noise)."""
    import torch
    import torch.nn.functional as F

    low = torch.rand(
        1, 3, height // 16 + 1, width // 16 + 1, generator=torch.Generator().manual_seed(seed)
    )
    image = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    return (image[0].clamp(0, 1) * 255).round().to(torch.uint8)


class Setup:
    """The model (seed 0) and every workload's prepared input."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from unipercept.modeling.uninext.captions import encode_categories
        from unipercept.modeling.uninext.preprocess import UninextPreprocessor
        from unipercept.modeling.uninext.template import concat_templates

        self.model = build_model(args).eval()
        self.prompt = encode_categories(NAMES)
        sizes = SIZES["tiny" if args.tiny else "full"]
        self.batches = {}
        for seed, (name, (height, width)) in enumerate(sizes.items()):
            preprocess = UninextPreprocessor(short_size=min(height, width), max_size=1333)
            self.batches[name] = preprocess([synthetic_frame(height, width, seed)])
        height, width = sizes["video"]
        self.box = torch.tensor([0.35 * width, 0.3 * height, 0.5 * width, 0.7 * height])  # xyxy
        with torch.no_grad():
            self.text = self.model.encode_text(self.prompt.input_ids, self.prompt.attention_mask)
            template = self.encode_template()
        self.template = concat_templates(template, template)  # hidden (1, 2T, Ct)

    def encode_template(self) -> Any:
        batch = self.batches["video"]
        return self.model.encode_template(batch.tensor[0], self.box, image_padding=~batch.valid[0])

    def search(self, name: str, *, sot: bool = False) -> Any:
        """A forward on batch ``name``: SOT (templates, pooled, boxes only) or detection with
        masks (and re-id embeddings on video frames)."""
        batch = self.batches[name]
        if sot:
            text, mask = self.template.hidden, self.template.masks
        else:
            text, mask = self.text, self.prompt.attention_mask
        return self.model(
            batch.tensor,
            ~batch.valid,
            batch.image_sizes,
            text,
            mask,
            pooled=sot,
            with_masks=not sot,
            with_embeddings=name == "video" and not sot,
        )

    def workload(self, name: str) -> Callable[[], Any]:
        return {
            "video": lambda: self.search("video"),
            "sot": lambda: self.search("video", sot=True),
            "image": lambda: self.search("image"),
            "prompt": lambda: self.model.encode_text(
                self.prompt.input_ids, self.prompt.attention_mask
            ),
            "template": self.encode_template,
        }[name]


@contextmanager
def variant_context(variant: str):
    import torch

    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        switch = {
            "fp32-pytorch-msda": FORCE_PYTORCH_ENV,
            "fp32-plain-linear": LINEAR_FORCE_PYTORCH_ENV,
        }.get(variant)
        if switch is not None:
            os.environ[switch] = "1"
            stack.callback(os.environ.pop, switch, None)
        if variant == "bf16":
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        yield


@contextmanager
def stage_timer(model: Any, totals: dict[str, float]):
    """Adds each stage's seconds to ``totals`` (hooks on the model's parts)."""
    stages = {
        "backbone": model.backbone,
        "encoder": model.transformer.encoder,
        "decoder": model.transformer.decoder,
        "masks": model.mask_branch,
    }
    stages["fusion"] = model.transformer.encoder.vl_layers[0]
    if model.reid_head is not None:
        stages["reid"] = model.reid_head
    started: dict[str, float] = {}
    handles = []
    for name, module in stages.items():

        def before(*_, name=name):
            started[name] = time.perf_counter()

        def after(*_, name=name):
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - started[name]

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def detections(output: Any, positive_map: Any, image_size: tuple[int, int], top_k: int) -> Any:
    from unipercept.modeling.uninext.postprocess import od_logits, select_detections

    logits = od_logits(output.logits.float(), positive_map.float())[0]  # (Q, K)
    return select_detections(
        logits,
        output.iou_logits.float()[0],
        output.boxes.float()[0],
        image_size=image_size,
        top_k=top_k,
    )


def compare(ref: Any, other: Any, positive_map: Any, image_size: tuple[int, int]) -> dict:
    """How far ``other``'s answers are from ``ref``'s (one image).

    Decoder query i starts from the i-th best encoder proposal (its box) and the i-th learned
    content embedding, so where the encoder's ranking changes, slots pair other proposals and
    contents: the differences are also given over the slots that kept their proposal.
    """
    import torch

    from unipercept.modeling.uninext.postprocess import od_logits

    height, width = image_size
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    logits = [od_logits(o.logits.float(), positive_map.float())[0] for o in (ref, other)]  # (Q, K)
    boxes = [o.boxes.float()[0] * scale for o in (ref, other)]  # (Q, 4) cxcywh pixels
    objectness = [o.transformer.enc_logits.float()[0, :, 0] for o in (ref, other)]  # (S,)
    finite = objectness[0].isfinite() & objectness[1].isfinite()
    # How far apart the ranked proposals' scores are, for the objectness drift to compare with.
    ranked = objectness[0][finite].topk(min(len(ref.transformer.topk[0]) + 1, int(finite.sum())))
    topk = [o.transformer.topk[0] for o in (ref, other)]  # (Q,) encoder positions
    same = topk[0] == topk[1]  # (Q,) slots that kept their proposal
    found = [detections(o, positive_map, image_size, TOP_K + 1) for o in (ref, other)]
    pairs = [
        set(zip(f.query_index[:TOP_K].tolist(), f.labels[:TOP_K].tolist(), strict=True))
        for f in found
    ]
    scores = found[0].scores

    def largest(difference: torch.Tensor) -> float | None:
        return float(difference.abs().max()) if difference.numel() else None

    return {
        "max_objectness_diff": largest(objectness[0][finite] - objectness[1][finite]),
        "median_objectness_gap": float(-ranked.values.diff().median()),
        "leading_slots_same": int(same.long().cumprod(0).sum()),
        "slots_same": float(same.float().mean()),
        "max_logit_diff": largest(logits[0] - logits[1]),
        "max_box_diff_px": largest(boxes[0] - boxes[1]),
        "max_logit_diff_same_slots": largest(logits[0][same] - logits[1][same]),
        "max_box_diff_px_same_slots": largest(boxes[0][same] - boxes[1][same]),
        "top10_same_query_class": len(pairs[0] & pairs[1]),
        "top10_gap_10th_11th": float(scores[TOP_K - 1] - scores[TOP_K])
        if len(scores) > TOP_K
        else None,
        "top1_box_diff_px": largest(found[0].boxes_xyxy[0] - found[1].boxes_xyxy[0]),
    }


def child(args: argparse.Namespace) -> int:
    """One (workload, variant) in this process: peak resident set of a steady-state call."""
    import torch

    torch.set_num_threads(args.threads)
    workload, variant = args.child
    setup = Setup(args)
    run = setup.workload(workload)
    with variant_context(variant):  # entered per call, as timed (autocast's casts included)
        run()
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    with variant_context(variant):
        run()
    sys.stdout.write(
        json.dumps({"before_mb": before / 1024, "peak_mb": _status_kb("VmHWM") / 1024}) + "\n"
    )
    return 0


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(args: argparse.Namespace, workload: str, variant: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        workload,
        variant,
        "--threads",
        str(args.threads),
    ]
    if args.tiny:
        command.append("--tiny")
    elif args.checkpoint:
        command += ["--checkpoint", str(args.checkpoint)]
    else:
        command += ["--keys", str(args.keys)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory child {workload}/{variant} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def time_configs(setup: Setup, configs: list[tuple[str, str]], repeats: int) -> tuple:
    """First outputs, per-call seconds and per-stage seconds (summed) of every config."""
    from unipercept.ops import msda_backend

    for variant in VARIANTS:  # the switch is read on every call: check it took
        with variant_context(variant):
            backend = msda_backend("cpu")
        if (backend == "pytorch") != (variant == "fp32-pytorch-msda"):
            sys.stderr.write(f"uninext.py: {variant} runs the {backend} attention backend\n")
    outputs, times, stages = {}, {c: [] for c in configs}, {c: {} for c in configs}
    for config in configs:  # untimed first calls; their outputs are compared
        with variant_context(config[1]):
            outputs[config] = setup.workload(config[0])()
    for _ in range(repeats):
        for config in configs:
            with variant_context(config[1]), stage_timer(setup.model, stages[config]):
                start = time.perf_counter()
                setup.workload(config[0])()
                times[config].append(time.perf_counter() - start)
    return outputs, times, stages


STAGES = ("backbone", "fusion", "encoder", "decoder", "masks", "reid")
TIMING_HEADER = (
    "| workload | variant | ms | vs fp32 | "
    + " | ".join(STAGES)
    + " | peak MB | before MB |\n|---|---|"
    + "---:|" * (4 + len(STAGES))
    + "\n"
)
COMPARISON_COLUMNS = {
    "max_objectness_diff": "max d objectness",
    "median_objectness_gap": "median gap of ranked objectness",
    "leading_slots_same": "leading slots same",
    "slots_same": "slots same",
    "max_logit_diff": "max d logit",
    "max_box_diff_px": "max d box px",
    "max_logit_diff_same_slots": "max d logit, same slots",
    "max_box_diff_px_same_slots": "max d box px, same slots",
    "top10_same_query_class": "top-10 same (query, class)",
    "top10_gap_10th_11th": "score gap 10th-11th",
    "top1_box_diff_px": "top-1 d box px",
}


def timing_row(row: dict) -> str:
    stage_ms, memory = row["stage_ms"], row["memory"]
    cells = [row["workload"], row["variant"], f"{row['ms']:.0f}", f"{row['speedup_vs_fp32']:.2f}x"]
    cells += [f"{stage_ms[k]:.0f}" if k in stage_ms else "" for k in STAGES]
    cells += [f"{memory['peak_mb']:.0f}", f"{memory['before_mb']:.0f}"] if memory else ["", ""]
    return "| " + " | ".join(cells) + " |\n"


def comparison_row(comparison: dict) -> str:
    cells = [comparison["workload"], comparison["variant"]]
    for key in COMPARISON_COLUMNS:
        value = comparison[key]
        if key == "top10_same_query_class":
            cells.append(f"{value}/{TOP_K}")
        elif key == "leading_slots_same":
            cells.append(str(value))
        elif key == "slots_same":
            cells.append(f"{value:.1%}")
        else:
            cells.append("" if value is None else f"{value:.2g}")
    return "| " + " | ".join(cells) + " |\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=Path, default=DEFAULT_KEYS, help="key manifest (r50.txt)")
    parser.add_argument(
        "--checkpoint", type=Path, help="a UNINEXT .pth: its architecture and weights"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--tiny", action="store_true", help="a tiny architecture, small inputs")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # WORKLOAD VARIANT
    args = parser.parse_args(argv)
    if not (args.tiny or args.checkpoint) and not args.keys.is_file():
        sys.stderr.write(f"uninext.py: key manifest not found: {args.keys} (pass --keys PATH)\n")
        return 2
    from unipercept.threads import limit_spinning

    limit_spinning()  # as the command line does, before torch loads
    if args.child:
        return child(args)
    import torch

    from unipercept.data.io import write_text_atomic
    from unipercept.ops import cpu_isa, msda_backend

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    setup = Setup(args)
    configs = [
        (workload, variant)
        for workload in args.workloads
        for variant in VARIANTS
        if workload in MSDA_WORKLOADS or variant not in TRANSFORMER_VARIANTS
    ]
    outputs, times, stages = time_configs(setup, configs, args.repeats)
    load_after = os.getloadavg()
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, MSDA backend {msda_backend('cpu')} ({cpu_isa()})"
    )
    sys.stdout.write(
        f"# {machine}, {'tiny' if args.tiny else args.checkpoint or 'full-size R50'}, load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after\n" + TIMING_HEADER
    )
    rows, comparisons = [], []
    for workload, variant in configs:
        ms = 1e3 * statistics.median(times[workload, variant])
        reference = 1e3 * statistics.median(times[workload, "fp32"])
        # Per call; the encoder's time includes the fusion block's, listed on its own.
        stage_ms = {k: 1e3 * v / args.repeats for k, v in stages[workload, variant].items()}
        if "encoder" in stage_ms:
            stage_ms["encoder"] -= stage_ms.get("fusion", 0.0)
        memory = None
        if workload in MSDA_WORKLOADS and not args.no_memory:
            memory = peak_memory(args, workload, variant)
        row = {
            "workload": workload,
            "variant": variant,
            "ms": ms,
            "speedup_vs_fp32": reference / ms,
            "stage_ms": stage_ms,
            "memory": memory,
        }
        rows.append(row)
        sys.stdout.write(timing_row(row))
        if workload in MSDA_WORKLOADS and variant != "fp32":
            sot = workload == "sot"
            positive_map = torch.ones(1, 1) if sot else setup.prompt.positive_map
            size = setup.batches["image" if workload == "image" else "video"].image_sizes[0]
            found = compare(
                outputs[workload, "fp32"], outputs[workload, variant], positive_map, size
            )
            comparisons.append({"workload": workload, "variant": variant, **found})
    header = ["workload", "variant", *COMPARISON_COLUMNS.values()]
    sys.stdout.write(
        "\n| " + " | ".join(header) + " |\n|---|---|" + "---:|" * len(COMPARISON_COLUMNS) + "\n"
    )
    for comparison in comparisons:
        sys.stdout.write(comparison_row(comparison))
    if args.json:
        payload = {
            "machine": machine,
            "model": "tiny" if args.tiny else str(args.checkpoint or args.keys),
            "weights": "checkpoint" if args.checkpoint else "random (seed 0)",
            "threads": args.threads,
            "repeats": args.repeats,
            "load_average": {"before": load_before, "after": load_after},
            "results": rows,
            "comparisons": comparisons,
        }
        write_text_atomic(args.json, json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
