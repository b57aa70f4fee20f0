"""``evaluate --model copy-first``: the first frame's annotation in every frame, scored by the
same loops and scorers as a model (the VOS and SOT baselines a model must beat)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unipercept import evaluate
from unipercept.evaluation.davis import write_index_folder


def _vos_dataset(root, *, moving: bool) -> None:
    """One sequence of 6 frames: a square that stays, or moves 4 px per frame."""
    names = [f"{t:05d}" for t in range(6)]
    masks = {}
    for t, name in enumerate(names):
        index = np.zeros((32, 48), dtype=np.uint8)
        shift = 4 * t if moving else 0
        index[8:20, 4 + shift : 16 + shift] = 1
        masks[name] = index
        frame = np.zeros((32, 48, 3), dtype=np.uint8)
        frame[index == 1] = 200
        (root / "images" / "seq").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(root / "images" / "seq" / f"{name}.jpg")
    write_index_folder(root / "gt" / "seq", masks)


@pytest.mark.parametrize("moving", [False, True])
def test_copy_first_frame_vos(tmp_path, moving: bool) -> None:
    _vos_dataset(tmp_path, moving=moving)
    out = tmp_path / "scores.json"
    args = ["vos", "--gt", str(tmp_path / "gt"), "--images", str(tmp_path / "images")]
    args += ["--results", str(tmp_path / "res"), "--model", "copy-first", "--json", str(out)]
    assert evaluate.main(args) == 0
    score = json.loads(out.read_text())["J&F"]
    # A still object is followed perfectly by doing nothing; a moving one is not.
    assert score == pytest.approx(1.0) if not moving else score < 0.5


@pytest.mark.parametrize("moving", [False, True])
def test_copy_first_box_sot(tmp_path, moving: bool) -> None:
    folder = tmp_path / "lasot" / "thing" / "thing-1"
    (folder / "img").mkdir(parents=True)
    rows = []
    for t in range(1, 9):
        x = 4 + (5 * t if moving else 0)
        frame = np.zeros((40, 80, 3), dtype=np.uint8)
        frame[10:20, x : x + 10] = 255
        Image.fromarray(frame).save(folder / "img" / f"{t:08d}.jpg")
        rows.append(f"{x},10,10,10")
    (folder / "groundtruth.txt").write_text("\n".join(rows) + "\n")
    out = tmp_path / "scores.json"
    lasot = str(tmp_path / "lasot")
    args = ["sot", "--gt", lasot, "--images", lasot, "--results", str(tmp_path / "res")]
    assert evaluate.main([*args, "--model", "copy-first", "--json", str(out)]) == 0
    auc = json.loads(out.read_text())["success_auc"]
    assert auc > 0.95 if not moving else auc < 0.3


def test_copy_first_answers_only_annotation_tasks(tmp_path, caplog) -> None:
    gt = tmp_path / "mot"
    gt.mkdir()
    args = ["mot", "--gt", str(gt), "--images", str(gt), "--results", str(tmp_path / "r")]
    assert evaluate.main([*args, "--model", "copy-first"]) == 2
    assert "the copy-first baseline answers sot and vos, not mot" in caplog.text
