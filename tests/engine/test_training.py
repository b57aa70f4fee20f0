"""Training end to end on the generated world: every stage under torchrun with Gloo, exact
resume after a kill, and a tiny model that really learns referring expressions."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unipercept.data.synthetic import generate

TINY = ["model=unipercept_tiny", "trainer=cpu_tiny", "stage.warmup_steps=1", "stage.milestones=[]"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", seed=0, size="small")
    return root


def run_train(
    args: list[str], data_root: Path, torchrun: int = 0, wait: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess | subprocess.Popen:
    env = {**os.environ, "UNIPERCEPT_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    if torchrun:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={torchrun}",
            "-m",
            "unipercept.train",
            *args,
        ]
    else:
        command = [sys.executable, "-m", "unipercept.train", *args]
    if not wait:
        return subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


def test_three_stages_run_under_torchrun_with_gloo(data_root, tmp_path):
    """Stage 1 from scratch, stage 2 from stage 1, stage 3 from stage 2, two processes each."""
    previous = None
    for stage in ("1_pretrain", "2_image_joint", "3_video_joint"):
        output = tmp_path / stage
        init = f"stage.init_from={previous}" if previous else "stage.init_from=null"
        result = run_train(
            [
                f"stage={stage}",
                f"stage/mixture=synthetic_stage{stage[0]}",
                *TINY,
                "stage.max_steps=2",
                init,
                f"output_dir={output}",
            ],
            data_root,
            torchrun=2,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        final = output / "checkpoints" / "step_00000002"
        assert (final / "model.safetensors").is_file() and (final / "config.yaml").is_file()
        if previous is not None:
            before, after = weights(previous / "step_00000002"), weights(final)
            changed = [k for k in after if k in before and not torch.equal(after[k], before[k])]
            assert changed, f"{stage} did not train"
            if stage != "1_pretrain":
                text = [k for k in changed if k.startswith("prompt_encoders.category.text.model.")]
                assert not text, "the text encoder is frozen after stage 1"
        previous = output / "checkpoints"
    # Stage 3 started its annotation encoder from the stage-2 image backbone: the 4-channel
    # first convolution holds the backbone's RGB filters plus their mean.
    third = weights(previous / "step_00000002")
    assert third["prompt_encoders.annotation.backbone.features.0.0.weight"].shape[1] == 4


def test_resume_after_a_kill_equals_a_straight_run(data_root, tmp_path):
    args = [
        "stage=2_image_joint",
        "stage/mixture=synthetic_stage2",
        *TINY,
        "stage.init_from=null",
        "stage.max_steps=8",
        "trainer.checkpoint_every=4",
    ]
    straight = run_train([*args, f"output_dir={tmp_path / 'straight'}"], data_root)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed_dir = tmp_path / "killed"
    process = run_train([*args, f"output_dir={killed_dir}"], data_root, wait=False)
    middle = killed_dir / "checkpoints" / "step_00000004"
    deadline = time.monotonic() + 300
    while not (middle / "model.safetensors").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert middle.is_dir(), "no checkpoint at step 4 before the kill"
    # Should the process have got further before the kill, pretend it died right after step 4.
    for later in (killed_dir / "checkpoints").glob("step_*"):
        if later.name > middle.name:
            shutil.rmtree(later)

    resumed = run_train([*args, f"output_dir={killed_dir}", "resume=true"], data_root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = weights(tmp_path / "straight" / "checkpoints" / "step_00000008")
    got = weights(killed_dir / "checkpoints" / "step_00000008")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["stage=9_nonsense"], "9_nonsense"),
        (
            ["stage=2_image_joint", "stage.init_from=/no/such/checkpoint"],
            "stage.init_from: no checkpoint at /no/such",
        ),
        (["stage=2_image_joint", "trainer.no_such_key=1"], "no_such_key"),
        (
            ["stage=2_image_joint", "stage.init_from=null", "stage.max_steps=3"],
            "stage.warmup_steps (1000)",
        ),
    ],
)
def test_config_errors_stop_before_any_work(data_root, tmp_path, args, message):
    result = run_train([*args, f"output_dir={tmp_path / 'out'}"], data_root, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_tiny_stage2_model_learns_referring_expressions(data_root, tmp_path):
    """Trained through the CLI on 10 generated images, it finds the referred object (IoU >= 0.5)
    for at least 90% of their 55 expressions."""
    from unipercept import config
    from unipercept.data.io import load_image
    from unipercept.engine.batches import _normalise
    from unipercept.engine.checkpoint import load_model_weights
    from unipercept.evaluation import referring_box_precision
    from unipercept.structures import ExpressionPrompt
    from unipercept.tasks import ReferringTask

    output = tmp_path / "rec"
    result = run_train(
        [
            "stage=2_image_joint",
            "stage/mixture=synthetic_referring",
            *TINY,
            "stage.init_from=null",
            "stage.max_steps=1200",
            "stage.lr=5e-4",
            "stage.warmup_steps=20",
            "stage.milestones=[1020]",
            "trainer.batch_size=4",
            "trainer.checkpoint_every=1200",
            f"output_dir={output}",
        ],
        data_root,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    model = config.instantiate(config.compose_group_option("model", "unipercept_tiny")).eval()
    load_model_weights(model, output / "checkpoints" / "step_00001200")
    os.environ["UNIPERCEPT_DATA"] = str(data_root)
    try:
        spec = config.instantiate(config.compose_group_option("data", "synthetic_refcoco"))
        samples = spec.read()
    finally:
        del os.environ["UNIPERCEPT_DATA"]
    task = ReferringTask(quality_weight=0.0)
    predicted, expected = [], []
    for sample in samples:
        batch = _normalise([load_image(sample.frames[0].image)])
        instances = sample.frames[0].instances
        for expression in sample.expressions:
            with torch.no_grad():
                output_ = model(batch, [ExpressionPrompt(expression.text)])
            predicted.append(task.postprocess(output_, batch)[0].boxes[0])
            expected.append(instances.boxes[instances.track_ids == expression.target_ids[0]][0])
    score = referring_box_precision(predicted, expected)
    assert score.count == 55
    assert score.precision >= 0.9, f"REC P@0.5 {score.precision:.3f}"
