"""The Ref-YouTube-VOS submission layout: per-expression binary PNGs, written atomically."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from unipercept.evaluation.rvos import RefYouTubeVosSubmission, read_submission_masks


def _masks(count: int = 3, height: int = 12, width: int = 16) -> torch.Tensor:
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    for t in range(count):
        masks[t, 2:6, t : t + 5] = True
    masks[-1] = False  # the object is not found in the last frame: still a file, all zero
    return masks


def test_layout_round_trip_and_zip(tmp_path):
    submission = RefYouTubeVosSubmission(tmp_path / "sub")
    masks = _masks()
    folder = submission.write("0a1b2c", "1", ["00000", "00005", "00010"], masks)
    assert folder == tmp_path / "sub" / "Annotations" / "0a1b2c" / "1"
    with Image.open(folder / "00005.png") as image:
        assert image.mode == "L" and set(np.unique(np.asarray(image))) == {0, 255}
    back = read_submission_masks(folder)
    assert list(back) == ["00000", "00005", "00010"]
    assert all(torch.equal(back[n], m) for n, m in zip(back, masks, strict=True))
    packed = submission.zip(tmp_path / "submission.zip")
    with zipfile.ZipFile(packed) as archive:
        assert sorted(archive.namelist()) == [
            f"Annotations/0a1b2c/1/{n}.png" for n in ("00000", "00005", "00010")
        ]


def test_rewriting_an_expression_replaces_it_whole(tmp_path):
    submission = RefYouTubeVosSubmission(tmp_path)
    submission.write("v", "0", ["a", "b"], _masks(2))
    folder = submission.write("v", "0", ["c"], _masks(1))
    assert sorted(p.name for p in folder.iterdir()) == ["c.png"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["0"]


def test_an_expression_folder_holding_other_files_is_not_replaced(tmp_path):
    submission = RefYouTubeVosSubmission(tmp_path)
    folder = submission.write("v", "0", ["a"], _masks(1))
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        submission.write("v", "0", ["c"], _masks(1))
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "notes.txt"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["0"]  # no staging left


def test_bad_input_names_the_expression_and_writes_nothing(tmp_path):
    submission = RefYouTubeVosSubmission(tmp_path)
    with pytest.raises(ValueError, match=r"v/0: 2 frame names for 3 masks"):
        submission.write("v", "0", ["a", "b"], _masks(3))
    with pytest.raises(ValueError, match="bool"):
        submission.write("v", "0", ["a"], _masks(1).float())
    with pytest.raises(ValueError, match="plain folder name"):
        submission.write("../x", "0", ["a"], _masks(1))
    with pytest.raises(ValueError, match="bad frame name"):
        submission.write("v", "0", ["a", "b/c"], _masks(2))
    # Nothing half-written: no expression folder, no staging left behind.
    assert not (tmp_path / "Annotations" / "v" / "0").exists()
    assert list((tmp_path / "Annotations" / "v").iterdir()) == []
    with pytest.raises(ValueError, match="nothing to pack"):
        RefYouTubeVosSubmission(tmp_path / "empty").zip(tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
    with pytest.raises(ValueError, match="no expression folder"):
        read_submission_masks(tmp_path / "missing")


def test_rvos_scores_each_expression_as_one_object(tmp_path):
    from unipercept.evaluation.rvos import evaluate_rvos

    truth = torch.zeros(4, 40, 40, dtype=torch.bool)
    truth[:, 10:30, 10:30] = True  # a 20x20 object in every frame
    frames = ["00000", "00005", "00010", "00015"]
    gt = RefYouTubeVosSubmission(tmp_path / "gt")
    gt.write("v", "0", frames, truth)
    gt.write("v", "1", frames, truth)
    pred = RefYouTubeVosSubmission(tmp_path / "pred")
    pred.write("v", "0", frames, truth)  # perfect
    shifted = torch.zeros_like(truth)
    shifted[:, 10:30, 20:40] = True  # half the object: J = 200 / 600
    pred.write("v", "1", frames, shifted)
    result = evaluate_rvos(tmp_path / "gt", tmp_path / "pred")
    assert [o.sequence for o in result.objects] == ["v/0", "v/1"]
    assert result.objects[0].j.mean == 1.0 and result.objects[0].f.mean == 1.0
    assert result.objects[1].j.mean == pytest.approx(1 / 3)
    assert 0 < result.objects[1].f.mean < 1
    assert result.j.mean == pytest.approx((1 + 1 / 3) / 2)
    pred.write("w", "0", frames, truth)
    with pytest.raises(ValueError, match="w/0: expression not in the ground truth"):
        evaluate_rvos(tmp_path / "gt", tmp_path / "pred")
    with pytest.raises(ValueError, match="ground truth folder"):
        evaluate_rvos(tmp_path / "nope", tmp_path / "pred")
