"""``python -m unipercept.evaluate`` as a command line (issue #14): help without heavy
imports, one-line usage errors, output paths checked before the work, and frame order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from unipercept import evaluate

_HEAVY = ("torch", "transformers", "hydra", "pycocotools", "trackeval", "cv2", "av", "scipy")

_HELP_PROBE = """
import contextlib, io, json, runpy, sys
sys.argv = ["unipercept.evaluate", "--help"]
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        runpy.run_module("unipercept.evaluate", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & HEAVY)
print(json.dumps({"code": code, "help": out.getvalue(), "heavy": heavy}))
"""


def test_help_imports_nothing_heavy_and_explains_every_option():
    """``python -m unipercept.evaluate --help`` is answered by argparse alone: the heavy
    libraries load only once a task runs (checked in sys.modules, not with a timer)."""
    probe = _HELP_PROBE.replace("HEAVY", repr(set(_HEAVY)))
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["code"] == 0
    assert report["heavy"] == [], f"--help imported {report['heavy']}"
    text = " ".join(report["help"].split())
    assert "see --help" not in text
    # Every option says what it is for; --images names all seven tasks that take it.
    assert "--images DIR det, insseg, vos, sot, mot, mots, vis: run the model" in text
    assert "--gt PATH the ground truth: a COCO json (det, insseg)" in text
    for option in ("--results", "--data", "--json", "--weights", "--categories", "--max-size"):
        assert f"{option} " in text


def _command_line(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unipercept.evaluate", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_unknown_task_is_one_line_naming_the_tasks():
    result = _command_line("detection", "--gt", "a.json", "--results", "b.json")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'detection'" in lines[0]
    for task in (*evaluate.TASKS, "rec", "res"):
        assert f"'{task}'" in lines[0]


def _perfect_sot(root: Path) -> list[str]:
    """A one-sequence LaSOT folder and results equal to it; the arguments scoring them."""
    sequence = root / "gt" / "cat" / "cat-1"
    sequence.mkdir(parents=True)
    (sequence / "groundtruth.txt").write_text("10,10,20,20\n12,11,20,20\n")
    (root / "res").mkdir()
    (root / "res" / "cat-1.txt").write_text("10,10,20,20\n12,11,20,20\n")
    return ["sot", "--gt", str(root / "gt"), "--results", str(root / "res")]


def test_json_below_a_file_is_one_line_and_exit_2(tmp_path):
    args = _perfect_sot(tmp_path)
    (tmp_path / "scores").write_text("a file where a folder should be")
    result = _command_line(*args, "--json", str(tmp_path / "scores" / "sot.json"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: --json ") and "is a file, not a folder" in lines[0]
    # Refused before scoring: nothing was printed.
    assert result.stdout == ""
    assert evaluate.main([*args, "--json", str(tmp_path)]) == 2  # a folder is no json file


def _index_folder(folder: Path, names: list[str], wrong: str | None = None) -> None:
    from unipercept.evaluation.davis import write_index_folder

    frames = {}
    for name in names:
        index = np.zeros((8, 8), dtype=np.uint8)
        if name != wrong:
            index[2:6, 2:6] = 1
        frames[name] = index
    write_index_folder(folder, frames)


def test_vos_first_and_last_frames_follow_natural_order(tmp_path):
    """The DAVIS rule leaves out the first and last frame: with unpadded names the last is
    "11", not "9" (name order); zero-padded names, as DAVIS's own, score the same."""
    scores = {}
    for padded in (False, True):
        names = [f"{t:05d}" if padded else str(t) for t in range(1, 12)]
        root = tmp_path / ("padded" if padded else "unpadded")
        _index_folder(root / "gt" / "seq", names)
        _index_folder(root / "pred" / "seq", names, wrong=names[-1])
        out = root / "vos.json"
        args = ["vos", "--gt", str(root / "gt"), "--results", str(root / "pred")]
        assert evaluate.main([*args, "--json", str(out)]) == 0
        scores[padded] = json.loads(out.read_text())
    assert scores[False]["J"]["mean"] == 1.0, "the last frame, 11, was scored"
    assert scores[False] == scores[True]


class _EchoSession:
    """A stand-in tracking session: the box it reports encodes the frame's pixel value."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return None

    def step(self, image):
        import torch

        from unipercept.structures import Instances

        value = float(image[0, 0, 0])
        return Instances(
            tuple(image.shape[1:]),
            boxes=torch.tensor([[value, 0.0, value + 1.0, 1.0]]),
            scores=torch.ones(1),
        )


class _EchoPredictor:
    def start(self, task, prompt, **options):
        return _EchoSession()


def test_model_mode_reads_frame_folders_in_natural_order(tmp_path):
    """``--images`` steps through ``1.png, 2.png, ..., 10.png, 11.png`` in that order (as
    ``predict`` does), not in name order (1, 10, 11, 2, ...)."""
    from PIL import Image

    sequence = tmp_path / "lasot" / "cat" / "cat-1"
    (sequence / "img").mkdir(parents=True)
    for t in range(1, 12):
        Image.new("RGB", (8, 6), (10 * t, 0, 0)).save(sequence / "img" / f"{t}.png")
    (sequence / "groundtruth.txt").write_text("".join("1,1,2,2\n" for _ in range(11)))
    evaluate.predict_sot(tmp_path / "lasot", tmp_path / "res", _EchoPredictor())
    rows = np.loadtxt(tmp_path / "res" / "cat-1.txt", delimiter=",")
    assert rows[:, 0].tolist() == [10.0 * t for t in range(1, 12)]
