"""scripts/build_bundled_model.py, the script that rebuilds the bundled model, runs end to end
(at a tiny scale: the small world, a few steps per stage) and its output loads and predicts."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.scripts import load_script
from unipercept.api import Predictor
from unipercept.assets import read_samples
from unipercept.modeling.pretrained import META_FILE, load_model

from .conftest import REPO_ROOT


def test_the_build_script_trains_every_stage_exports_and_writes_samples(tmp_path):
    work, out = tmp_path / "work", tmp_path / "assets"
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "build_bundled_model.py"),
        "--work",
        str(work),
        "--out",
        str(out),
        "--world-size",
        "small",
        "--scale",
        "0.0003",  # one or two steps per stage
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    stages = load_script("build_bundled_model").STAGES
    for stage, _, _, full_steps, *_ in stages:
        steps = max(1, round(full_steps * 0.0003))
        assert (work / stage / "checkpoints" / f"step_{steps:08d}" / "model.safetensors").is_file()

    model = load_model(out / "unipercept-tiny")
    meta = json.loads((out / "unipercept-tiny" / META_FILE).read_text())
    assert meta["preprocess"] == {"short_size": 160, "max_size": 256}
    assert model.task_settings == meta["tasks"] == load_script("build_bundled_model").TASK_SETTINGS
    assert any(name.startswith("prompt_encoders.category.text.") for name in meta["excluded"])
    # The referring re-scorer is fitted on the final weights and saved with them.
    assert model.rescorer is not None and "re-scorer:" in result.stderr
    samples = read_samples(out / "samples")
    assert samples.video.is_file() and samples.mask.is_file()
    found = Predictor(model).predict(samples.image, samples.expression, task="rec")
    assert len(found) == 1  # rec answers with one box, trained or not

    # A rerun finds every stage finished and only exports again.
    again = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished already") == len(stages) == 4
