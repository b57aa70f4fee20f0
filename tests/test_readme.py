"""The README stays true: its Quickstart command, its predict examples and its Python blocks
run as written."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest

from unipercept import predict
from unipercept.modeling.pretrained import bundled_models

from .conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
needs_model = pytest.mark.skipif(
    "unipercept-tiny" not in bundled_models(), reason="the bundled model is not built"
)


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def blocks_in(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _with_output(arguments: list[str], output: str) -> list[str]:
    index = arguments.index("--output")
    return [*arguments[: index + 1], output, *arguments[index + 2 :]]


@needs_model
def test_the_quickstart_runs_the_main_job(tmp_path):
    quickstart = re.search(r"```bash\n(.*?)```", section("Quickstart"), flags=re.S).group(1)
    lines = [line for line in quickstart.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2, "two commands: the main job and the tests"
    setup, job = lines[0].split(" && ")
    assert setup == "bash scripts/setup.sh"
    tests = 'python -m pytest -m "not cuda and not slow" -n 2'  # two worker processes (xdist)
    assert lines[1] == f"bash scripts/setup.sh --dev && {tests}"
    arguments = shlex.split(job)
    assert arguments[:3] == ["python", "-m", "unipercept.predict"]
    out = tmp_path / "predictions"
    result = subprocess.run(
        [sys.executable, *arguments[1:3], *_with_output(arguments[3:], str(out))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions["images"]) == 24 and len(predictions["annotations"]) == 24
    assert (out / "shapes.overlay.mp4").stat().st_size > 0


@needs_model
def test_every_predict_example_runs(tmp_path):
    text = re.search(r"```bash\n(S=.*?)```", section("Predict"), flags=re.S).group(1)
    lines = text.strip().splitlines()
    samples = lines[0].split("=", 1)[1]
    commands = [shlex.split(line.replace("$S", samples)) for line in lines[1:]]
    tasks = [arguments[arguments.index("--task") + 1] for arguments in commands]
    assert sorted(tasks) == sorted(predict.IMAGE_TASKS + predict.VIDEO_TASKS)
    for arguments, task in zip(commands, tasks, strict=True):
        out = tmp_path / task
        options = _with_output(arguments[3:], str(out))
        options = [str(REPO_ROOT / a) if a.startswith("src/") else a for a in options]
        assert predict.main(options) == 0, task
        assert json.loads((out / "predictions.json").read_text())["annotations"], task


UNINEXT_SECTION = "Run UNINEXT's released weights"


def test_the_python_blocks_run(tmp_path):
    """Every ```python block, in order, in one fresh interpreter (blocks may build on
    earlier ones), in an empty working folder. The UNINEXT section's block needs a downloaded
    checkpoint: :func:`test_uninext_examples_run_on_the_fixture_model` runs it."""
    uninext = blocks_in(section(UNINEXT_SECTION), "python")
    code = "\n".join(block for block in blocks("python") if block not in uninext)
    needs_bundled = "load_model(" in code or "samples()" in code
    if needs_bundled and "unipercept-tiny" not in bundled_models():
        pytest.skip("the README's examples use the bundled model, which is not built")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=3600
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_uninext_examples_run_on_the_fixture_model(tmp_path, fixtures_dir):
    """The UNINEXT section's commands and Python, as written but with the reference fixture's
    tiny UNINEXT checkpoint in place of a downloaded release and the shipped samples in place
    of the user's photo and clip: convert, then every predict example and the Python block."""
    from unipercept.convert.cli import main as convert

    checkpoint = fixtures_dir / "uninext_r50_tiny" / "checkpoint.pth"
    if not checkpoint.is_file():
        pytest.skip(f"the UNINEXT reference fixture is not at {checkpoint}")
    text = section(UNINEXT_SECTION)
    samples = REPO_ROOT / "src" / "unipercept" / "assets" / "samples"
    stand_ins = {
        "$S": str(samples),
        "street.jpg": str(samples / "shapes.png"),
        "clip.mp4": str(samples / "shapes.mp4"),
    }

    def as_run(line: str) -> list[str]:
        for name, value in stand_ins.items():
            line = line.replace(name, value)
        return shlex.split(line.replace("$M", str(tmp_path / "uninext-r50")))

    (convert_line,) = [x for x in text.splitlines() if x.startswith("python -m unipercept.convert")]
    arguments = as_run(convert_line.split("#")[0])[3:]
    arguments[1] = str(checkpoint)  # the released file's name stands for the download
    arguments[2] = str(tmp_path / arguments[2])
    # The fixture's template side is 64 (a real release's is the default 256); small sizes
    # keep the run short.
    sizes = ["--image-size", "128", "--video-size", "96"]
    assert convert([*arguments, "--template-size", "64", *sizes]) == 0
    commands = [
        as_run(x) for x in text.splitlines() if x.startswith("python -m unipercept.predict")
    ]
    tasks = [arguments[arguments.index("--task") + 1] for arguments in commands]
    assert sorted(tasks) == sorted(predict.IMAGE_TASKS + predict.VIDEO_TASKS)
    for arguments, task in zip(commands, tasks, strict=True):
        out = tmp_path / task
        assert predict.main(_with_output(arguments[3:], str(out))) == 0, task
        assert json.loads((out / "predictions.json").read_text())["images"], task
    (code,) = blocks_in(text, "python")
    for name, value in stand_ins.items():
        code = code.replace(name, value)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=3600
    )
    assert result.returncode == 0, result.stderr[-3000:]
