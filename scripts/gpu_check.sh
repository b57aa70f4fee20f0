#!/usr/bin/env bash
# The checks that need a GPU, in one run on a lent machine (H100/H200, a CUDA build of torch,
# this repository copied there):
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]        # default: gpu_results/
#
# Steps, each logged to RESULTS_DIR/<step>.log; a failing step does not stop the others:
#   env         nvidia-smi, torch/CUDA versions, `python -m unipercept --json`
#   build       pip install --no-build-isolation --no-deps -e . (CUDA kernels for this GPU's
#               architecture only), then a check that the compiled op has its CUDA kernel
#   pytest      python -m pytest -m cuda (every CUDA test), then the deformable-attention tests
#   msda        benchmarks/msda.py --device cuda, float32, bfloat16 and float16
#   detector    the Deformable-DETR forward (benchmarks/detector.py's models) on CUDA, float32
#               and bfloat16 / float16 autocast, each against transformers in the same dtype
#               and in float32: benchmarks/detector.py itself times the CPU only
#   train       20 bf16 steps of the tiny model on a generated world (trainer=single_gpu)
#   predict     python -m unipercept.predict --device cuda on the shipped samples, det also
#               with --dtype bfloat16 and float16 (each sure float32 answer found again on the
#               same box, IoU >= 0.9, and score, +-0.05)
# and a summary (RESULTS_DIR/summary.txt); the exit status is 0 only when every step passed.
#
# Knobs (environment): STEPS (a subset, e.g. STEPS="pytest msda"), DEVICE (default cuda; cpu
# runs the same commands but the build on the CPU with small sizes, to check this script),
# PYTHON, TORCH_CUDA_ARCH_LIST, STEP_TIMEOUT (seconds per command, default 420). On an H100
# the whole run takes about six minutes, most of it the build.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RESULTS=$(mkdir -p "${1:-gpu_results}" && cd "${1:-gpu_results}" && pwd)
PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then  # no build: it would replace the local install
  STEPS=${STEPS:-env pytest msda detector train predict}
else
  STEPS=${STEPS:-env build pytest msda detector train predict}
fi
STEP_TIMEOUT=${STEP_TIMEOUT:-420}
export PYTHONUNBUFFERED=1
SUMMARY=()
FAILED=0

# run NAME COMMAND...: one command, its output in RESULTS/NAME.log, its result in the summary.
run() {
  local name=$1 log="$RESULTS/$1.log" start status
  shift
  start=$(date +%s)
  echo "== $name: $*" | tee -a "$RESULTS/commands.txt"
  { echo "\$ $*"; echo; } > "$log"
  timeout "$STEP_TIMEOUT" "$@" >> "$log" 2>&1
  status=$?
  local line
  line=$(printf '%-4s %-25s %4ss  %s' "$([ $status -eq 0 ] && echo ok || echo FAIL)" "$name" \
    "$(($(date +%s) - start))" "$([ $status -eq 0 ] && echo "" || echo "exit $status, see $log")")
  echo "   $line"
  SUMMARY+=("$line")
  [ $status -eq 0 ] || FAILED=1
  return $status
}

wanted() { [[ " $STEPS " == *" $1 "* ]]; }

if [ "$DEVICE" = cpu ]; then  # a check of this script: small sizes, no build
  TRAIN_FLAGS=(trainer=cpu_tiny trainer.device=cpu trainer.bf16=false stage.max_steps=2
    stage.warmup_steps=1 'stage.milestones=[1]')
  MSDA_FLAGS=(--device cpu --shapes enc-320x320 --repeats 1)
  DETECTOR_FLAGS=(--device cpu --repeats 1 --height 256 --width 320)
  PREDICT_DEVICE=cpu
else
  TRAIN_FLAGS=(trainer=single_gpu trainer.device="$DEVICE" trainer.bf16=true stage.max_steps=20
    stage.warmup_steps=2 'stage.milestones=[15]')
  MSDA_FLAGS=(--device "$DEVICE" --repeats 5)
  DETECTOR_FLAGS=(--device "$DEVICE" --repeats 5)
  PREDICT_DEVICE=$DEVICE
fi

if wanted env; then
  if [ "$DEVICE" != cpu ]; then run env-nvidia-smi nvidia-smi; fi
  run env-torch "$PYTHON" -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), torch.cuda.get_device_name(0) \
if torch.cuda.is_available() else '')"
  run env-unipercept sh -c "$PYTHON -m unipercept --json > '$RESULTS/unipercept-env.json'"
fi

if wanted build; then
  # Only this GPU's architecture: a build for every architecture takes several minutes.
  arch=${TORCH_CUDA_ARCH_LIST:-$("$PYTHON" -c "import torch; \
print('%d.%d' % torch.cuda.get_device_capability()) if torch.cuda.is_available() else None" \
    2>/dev/null)}
  if [ -n "$arch" ] && [ "$arch" != None ]; then export TORCH_CUDA_ARCH_LIST=$arch; fi
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  # setup.py turns a failed compile into a warning (a pure-Python install): -v shows its
  # message, and the next commands check that the CUDA kernel really is there. Without pip (or
  # an editable install), the extension is built beside the sources and src/ put on the path.
  build_log=
  if run build-pip "$PYTHON" -m pip install -v --no-build-isolation --no-deps -e .; then
    build_log=build-pip
  elif run build-inplace "$PYTHON" setup.py build_ext --inplace; then
    build_log=build-inplace
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if [ -n "$build_log" ]; then
    run build-has-cuda-kernels grep -F "built the compiled deformable-attention op (CPU and CUDA" \
      "$RESULTS/$build_log.log"
  fi
  run build-cuda-op-loads "$PYTHON" -c "import torch, unipercept.ops as ops; \
backend = ops.msda_backend('cuda'); print('msda backend for cuda:', backend, '- cpu isa:', \
ops.cpu_isa()); assert backend == 'cuda', 'the compiled op has no CUDA kernel'"
fi

if wanted pytest; then
  run pytest-cuda "$PYTHON" -m pytest -m cuda -v -rs -p no:cacheprovider tests \
    --junitxml="$RESULTS/pytest-cuda.xml"
  if [ "$DEVICE" != cpu ]; then  # a CUDA test skips without a GPU: here none may
    run pytest-cuda-none-skipped grep -q 'skipped="0"' "$RESULTS/pytest-cuda.xml"
  fi
  run pytest-msda "$PYTHON" -m pytest -q -rs -p no:cacheprovider \
    tests/ops/test_ms_deform_attn.py tests/ops/test_ms_deform_attn_grad.py
fi

if wanted msda; then
  run msda-fp32 "$PYTHON" benchmarks/msda.py "${MSDA_FLAGS[@]}" --json "$RESULTS/msda-fp32.json"
  run msda-bf16 "$PYTHON" benchmarks/msda.py "${MSDA_FLAGS[@]}" --dtype bfloat16 \
    --json "$RESULTS/msda-bf16.json"
  run msda-fp16 "$PYTHON" benchmarks/msda.py "${MSDA_FLAGS[@]}" --dtype float16 \
    --json "$RESULTS/msda-fp16.json"
fi

if wanted detector; then
  # benchmarks/detector.py has no --device/--dtype: the same models, timed here on the device.
  cat > "$RESULTS/detector_device.py" <<'EOF'
"""Deformable DETR forward on one device: unipercept (compiled op, then the PyTorch reference
forced) against transformers, same weights (benchmarks/detector.py's build_models)."""
import argparse, json, os, statistics, sys, time

import torch

sys.path.insert(0, "benchmarks")
from detector import build_models  # noqa: E402

from unipercept.ops import msda_backend  # noqa: E402
from unipercept.structures import ImageBatch  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="cuda")
parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--height", type=int, default=480)
parser.add_argument("--width", type=int, default=640)
parser.add_argument("--json")
args = parser.parse_args()
device = torch.device(args.device)
hf, ours = build_models()
hf.to(device)
ours.to(device)
image = torch.randn(3, args.height, args.width, generator=torch.Generator().manual_seed(1))
batch = ImageBatch.from_images([image]).to(device)
pixels, mask = batch.tensor, batch.valid.long()
dtype = getattr(torch, args.dtype)
reduced = dtype != torch.float32


def sync():
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(enabled=True):
    return torch.autocast(device.type, dtype=dtype, enabled=reduced and enabled)


def run_hf(enabled=True):
    with torch.no_grad(), autocast(enabled):
        return hf(pixel_values=pixels, pixel_mask=mask).logits


def run_ours(force_reference):
    def run():
        if force_reference:
            os.environ["UNIPERCEPT_MSDA_FORCE_PYTORCH"] = "1"
        try:
            with torch.no_grad(), autocast():
                return ours(batch).logits[-1]
        finally:
            os.environ.pop("UNIPERCEPT_MSDA_FORCE_PYTORCH", None)

    return run


backend = msda_backend(device)
print(f"msda backend on {device}: {backend}")
runs = {"unipercept": run_ours(False), "unipercept-pytorch-attention": run_ours(True),
        "transformers": run_hf}
if reduced:
    runs["transformers-float32"] = lambda: run_hf(enabled=False)
reference = run_hf(enabled=False).float()  # transformers in float32
differences = {}
for name in ("unipercept", "unipercept-pytorch-attention", "transformers"):
    logits = runs[name]().float()
    assert torch.isfinite(logits).all(), f"{name}: non-finite logits in {args.dtype}"
    differences[name] = (logits - reference).abs().max().item()
print("max logit difference to transformers in float32:", differences)
if not reduced and max(differences.values()) > 1e-3:
    raise SystemExit(f"float32 outputs disagree: {differences}")
if reduced and differences["unipercept"] > 2 * max(differences["transformers"], 0.05):
    raise SystemExit(f"{args.dtype}: unipercept drifts from float32 far more than transformers "
                     f"does in {args.dtype}: {differences}")
times = {name: [] for name in runs}
for _ in range(args.repeats):
    for name, run in runs.items():
        run()
        sync()
        start = time.perf_counter()
        run()
        sync()
        times[name].append((time.perf_counter() - start) * 1e3)
medians = {name: statistics.median(t) for name, t in times.items()}
print(f"# {args.height}x{args.width}, batch 1, {device}, {args.dtype}, median of {args.repeats}")
for name, value in medians.items():
    print(f"{name:<30}{value:>10.1f} ms/image{medians['transformers'] / value:>10.2f}x")
if args.json:
    record = {"device": str(device), "dtype": args.dtype, "backend": backend,
              "ms_per_image": medians, "max_logit_difference": differences,
              "height": args.height, "width": args.width, "repeats": args.repeats,
              "torch": torch.__version__, "command": " ".join(sys.argv)}
    with open(args.json, "w") as file:
        json.dump(record, file, indent=2)
EOF
  run detector-fp32 "$PYTHON" "$RESULTS/detector_device.py" "${DETECTOR_FLAGS[@]}" \
    --json "$RESULTS/detector-fp32.json"
  run detector-bf16 "$PYTHON" "$RESULTS/detector_device.py" "${DETECTOR_FLAGS[@]}" \
    --dtype bfloat16 --json "$RESULTS/detector-bf16.json"
  run detector-fp16 "$PYTHON" "$RESULTS/detector_device.py" "${DETECTOR_FLAGS[@]}" \
    --dtype float16 --json "$RESULTS/detector-fp16.json"
fi

if wanted train; then
  rm -rf "$RESULTS/data" "$RESULTS/train"
  run train-data "$PYTHON" -m unipercept.data.synthetic --out "$RESULTS/data/synthetic" \
    --seed 0 --size small &&
    run train-20-steps env UNIPERCEPT_DATA="$RESULTS/data" "$PYTHON" -m unipercept.train \
      stage=1_pretrain stage/mixture=synthetic_stage1 model=unipercept_tiny "${TRAIN_FLAGS[@]}" \
      stage.init_from=null output_dir="$RESULTS/train" trainer.checkpoint_every=1000 \
      trainer.log_every=1 trainer.progress=false &&
    # Every step logged with a finite loss (a NaN step is skipped with a warning instead),
    # and the final checkpoint written.
    run train-losses-finite sh -c "! grep -q 'non-finite loss' '$RESULTS/train-20-steps.log' && \
grep -E 'step [0-9]+/[0-9]+ loss [0-9.]+' '$RESULTS/train-20-steps.log' | tail -n 3 && \
ls -d '$RESULTS'/train/checkpoints/step_*"
  rm -rf "$RESULTS/data"  # regenerated in seconds; not worth copying back
fi

if wanted predict; then
  run predict-rvos "$PYTHON" -m unipercept.predict --task rvos \
    --prompt "the green striped triangle" --input src/unipercept/assets/samples/shapes.mp4 \
    --output "$RESULTS/predict-rvos" --save-video --device "$PREDICT_DEVICE" --overwrite
  for dtype in float32 bfloat16 float16; do
    run "predict-det-$dtype" "$PYTHON" -m unipercept.predict --task det \
      --prompt "circle. square. triangle" --input src/unipercept/assets/samples/shapes.png \
      --output "$RESULTS/predict-det-$dtype" --device "$PREDICT_DEVICE" --dtype "$dtype" \
      --overwrite
  done
  # Each float32 answer scoring 0.3 or more found again in bfloat16 and float16: the same label
  # on a box at IoU >= 0.9, the score within 0.05 (benchmarks/agreement.py's matching).
  cat > "$RESULTS/predict_agree.py" <<'EOF'
import json, sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, "benchmarks")
from agreement import agreement  # noqa: E402


def answers(folder, min_score=0.0):
    records = json.loads((Path(folder) / "predictions.json").read_text())["annotations"]
    records = [r for r in records if r["score"] >= min_score]
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)]
    return SimpleNamespace(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                           scores=torch.tensor([r["score"] for r in records]),
                           labels=torch.tensor([r["category_id"] for r in records]))


reference = answers(sys.argv[1], min_score=0.3)
assert len(reference.boxes), f"{sys.argv[1]}: no float32 answer scores 0.3 or more"
failed = False
for folder in sys.argv[2:]:
    result = agreement(reference, answers(folder), min_iou=0.9)
    print(folder, result)
    failed |= result.matched < 1.0 or result.max_score_drift > 0.05
sys.exit(1 if failed else 0)
EOF
  run predict-det-agree "$PYTHON" "$RESULTS/predict_agree.py" "$RESULTS/predict-det-float32" \
    "$RESULTS/predict-det-bfloat16" "$RESULTS/predict-det-float16"
fi

{
  echo "gpu_check $(date -u +%FT%TZ) device=$DEVICE steps: $STEPS"
  printf '%s\n' "${SUMMARY[@]}"
  [ "$FAILED" -eq 0 ] && echo "all steps passed" || echo "SOME STEPS FAILED"
} | tee "$RESULTS/summary.txt"
exit "$FAILED"
