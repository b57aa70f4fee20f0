"""``evaluate --model copy-first``: the first frame's ground truth in every frame, scored by the
same loops and scorers as a model (the baselines a model must beat), on tiny hand-built
sequences whose scores are worked out by hand: a still object is followed perfectly by doing
nothing, a moving one is lost after the first frame."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from unipercept import evaluate
from unipercept.evaluation.davis import write_index_folder
from unipercept.structures.masks import rle_encode


def _save_frames(folder, count: int, height: int, width: int, name=lambda t: f"{t:05d}.jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(count):
        Image.fromarray(np.full((height, width, 3), 60, dtype=np.uint8)).save(folder / name(t))


def _square(height: int, width: int, x: int, y: int, side: int = 10) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[y : y + side, x : x + side] = True
    return mask


def _scores(args: list[str], out) -> dict:
    assert evaluate.main([*args, "--model", "copy-first", "--json", str(out)]) == 0
    return json.loads(out.read_text())


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
    args = ["vos", "--gt", str(tmp_path / "gt"), "--images", str(tmp_path / "images")]
    args += ["--results", str(tmp_path / "res")]
    score = _scores(args, tmp_path / "scores.json")["J&F"]
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
    lasot = str(tmp_path / "lasot")
    args = ["sot", "--gt", lasot, "--images", lasot, "--results", str(tmp_path / "res")]
    auc = _scores(args, tmp_path / "scores.json")["success_auc"]
    assert auc > 0.95 if not moving else auc < 0.3


# MOT and MOTS: 4 frames of 48x128; object 1 stays at x=4, object 2 starts at x=30 and, when
# moving, jumps 20 px a frame (so its first-frame box or mask never overlaps it again).
_FRAMES, _HEIGHT, _WIDTH = 4, 48, 128


def _x2(t: int, moving: bool) -> int:
    return 30 + (20 * t if moving else 0)


def _expected_tracking(moving: bool) -> dict[str, float]:
    """The scores worked out by hand. Still: every object matched with IoU 1 in every frame.
    Moving: object 1 is a true positive in all 4 frames, object 2 only in the first; in the
    other 3 its answer is a false positive and it is missed (TP 5, FP 3, FN 3, 8 true dets)."""
    if not moving:
        return {"mota": 1.0, "idf1": 1.0, "hota": 1.0, "smota": 1.0}
    det_a = 5 / (5 + 3 + 3)
    # Association accuracy of each true positive: object 1's 4 are 4/(4+0+0), object 2's one
    # is 1/(1+3+3) (3 of its true dets and 3 of its answers unmatched), averaged over the 5.
    ass_a = (4 * 1.0 + 1 / 7) / 5
    return {
        "mota": 1 - (3 + 3 + 0) / 8,
        "idf1": 2 * 5 / (8 + 8),  # ID-true-positives 4 + 1 of 8 true and 8 answered dets
        "hota": math.sqrt(det_a * ass_a),  # every IoU is 0 or 1: the same at every alpha
        "smota": (5 * 1.0 - 3 - 0) / 8,  # (soft TP - FP - IDSW) / true dets
    }


@pytest.mark.parametrize("moving", [False, True])
def test_copy_first_objects_mot(tmp_path, moving: bool) -> None:
    sequence = tmp_path / "mot" / "seq"
    _save_frames(sequence / "img1", _FRAMES, _HEIGHT, _WIDTH, name=lambda t: f"{t + 1:06d}.jpg")
    rows = []
    for t in range(_FRAMES):
        rows.append(f"{t + 1},1,4,4,10,10,1,1,1")
        rows.append(f"{t + 1},2,{_x2(t, moving)},20,10,10,1,1,1")
    # A car (class 3, conf 0) the scorer never evaluates: not answered, or it would be a false
    # positive in every frame.
    rows.append("1,3,60,4,10,10,0,3,1")
    (sequence / "gt").mkdir()
    (sequence / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    mot = str(tmp_path / "mot")
    results = tmp_path / "res"
    scores = _scores(
        ["mot", "--gt", mot, "--images", mot, "--results", str(results)], tmp_path / "s"
    )
    expected = _expected_tracking(moving)
    for name in ("mota", "idf1", "hota"):
        assert scores[name] == pytest.approx(expected[name]), name
    assert scores["id_switches"] == 0
    # Each frame answers the first frame's two evaluated objects with their ids, score 1.
    lines = (results / "seq.txt").read_text().splitlines()
    first = ["1,4,4,10,10,1,-1,-1,-1", f"2,{_x2(0, moving)},20,10,10,1,-1,-1,-1"]
    assert lines == [f"{t + 1},{row}" for t in range(_FRAMES) for row in first]


@pytest.mark.parametrize("moving", [False, True])
def test_copy_first_masks_mots(tmp_path, moving: bool) -> None:
    # Images in a MOTChallenge folder, the MOTS ground truth apart (as MOTSChallenge ships).
    _save_frames(
        tmp_path / "mot" / "seq" / "img1", _FRAMES, _HEIGHT, _WIDTH, lambda t: f"{t + 1:06d}.jpg"
    )
    rows = []
    for t in range(_FRAMES):
        objects = {
            2001: _square(_HEIGHT, _WIDTH, 4, 4),
            2002: _square(_HEIGHT, _WIDTH, _x2(t, moving), 20),
        }
        for track, mask in objects.items():
            counts = rle_encode(mask[None])[0]["counts"]
            rows.append(f"{t + 1} {track} 2 {_HEIGHT} {_WIDTH} {counts}")
    ignore = rle_encode(_square(_HEIGHT, _WIDTH, 100, 30)[None])[0]["counts"]
    rows.append(f"1 10000 10 {_HEIGHT} {_WIDTH} {ignore}")  # an ignore region: no object
    (tmp_path / "mots" / "seq" / "gt").mkdir(parents=True)
    (tmp_path / "mots" / "seq" / "gt" / "gt.txt").write_text("\n".join(rows) + "\n")
    args = ["mots", "--gt", str(tmp_path / "mots"), "--images", str(tmp_path / "mot")]
    args += ["--results", str(tmp_path / "res")]
    scores = _scores(args, tmp_path / "s.json")
    expected = _expected_tracking(moving)
    for name in ("smota", "idf1", "hota"):
        assert scores[name] == pytest.approx(expected[name]), name
    answered = {line.split()[1] for line in (tmp_path / "res" / "seq.txt").read_text().splitlines()}
    assert answered == {"2001", "2002"}


@pytest.mark.parametrize("moving", [False, True])
def test_copy_first_objects_vis(tmp_path, moving: bool) -> None:
    """A circle in every frame (still, or moving 2 px a frame) and a square from frame 1 on:
    the baseline answers the circle's first-frame mask everywhere and nothing for the square.

    Circle AP: still, IoU 1 at every threshold (AP 1); moving, the spatio-temporal IoU is
    (100 + 80 + 60 + 40) / (100 + 120 + 140 + 160) = 0.538: a match at 0.5 only (AP 0.1).
    The square is never found (AP 0); AP is the mean over the two categories."""
    height, width, frames = 40, 64, 4
    _save_frames(tmp_path / "images" / "v", frames, height, width)
    circle = [_square(height, width, 4 + (2 * t if moving else 0), 4) for t in range(frames)]
    square = [None] + [_square(height, width, 40, 20) for _ in range(1, frames)]

    def track(masks, category: int, number: int) -> dict:
        return {
            "id": number,
            "video_id": 1,
            "category_id": category,
            "iscrowd": 0,
            "segmentations": [None if m is None else rle_encode(m[None])[0] for m in masks],
        }

    gt = tmp_path / "valid.json"
    content = {
        "videos": [
            {
                "id": 1,
                "width": width,
                "height": height,
                "length": frames,
                "file_names": [f"v/{t:05d}.jpg" for t in range(frames)],
            }
        ],
        "annotations": [track(circle, 1, 1), track(square, 2, 2)],
        "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
    }
    gt.write_text(json.dumps(content))
    results = tmp_path / "vis.json"
    args = ["vis", "--gt", str(gt), "--images", str(tmp_path / "images")]
    scores = _scores([*args, "--results", str(results)], tmp_path / "s.json")
    circle_ap = 1.0 if not moving else 0.1
    assert scores["ap"] == pytest.approx((circle_ap + 0.0) / 2)
    assert scores["ap50"] == pytest.approx(0.5)
    assert scores["ap75"] == pytest.approx(0.5 if not moving else 0.0)
    (entry,) = json.loads(results.read_text())
    assert (entry["category_id"], entry["score"]) == (1, 1.0)
    assert entry["segmentations"] == [rle_encode(circle[0][None])[0]] * frames


@pytest.mark.parametrize("moving", [False, True])
def test_copy_first_target_rvos(tmp_path, monkeypatch, moving: bool) -> None:
    """Expression 0 refers to a square (still, or moving 2 px a frame); expression 1 to one
    absent from the first frame (frames 2 on). DAVIS scores frames 1-3 of 0-4.

    Expression 0: still, J = F = 1; moving, J = (80/120 + 60/140 + 40/160) / 3. Expression 1:
    its first-frame mask is empty: J = F = 1 in frame 1 (both empty), 0 in frames 2 and 3."""
    height, width, frames = 40, 64, 5
    root = tmp_path / "refytvos"
    _save_frames(root / "valid" / "JPEGImages" / "v", frames, height, width)
    names = [f"{t:05d}" for t in range(frames)]
    indices = {}
    for t, name in enumerate(names):
        index = np.zeros((height, width), dtype=np.uint8)
        index[_square(height, width, 4 + (2 * t if moving else 0), 4)] = 1
        if t >= 2:
            index[_square(height, width, 40, 20)] = 2
        indices[name] = index
    write_index_folder(root / "valid" / "Annotations" / "v", indices)
    objects = {
        "1": {"category": "square", "frames": names},
        "2": {"category": "circle", "frames": names[2:]},
    }
    (root / "valid" / "meta.json").write_text(json.dumps({"videos": {"v": {"objects": objects}}}))
    expressions = {
        "0": {"exp": "the square", "obj_id": "1"},
        "1": {"exp": "the other", "obj_id": "2"},
    }
    meta = {"videos": {"v": {"expressions": expressions, "frames": names}}}
    (root / "meta_expressions" / "valid").mkdir(parents=True)
    (root / "meta_expressions" / "valid" / "meta_expressions.json").write_text(json.dumps(meta))
    args = ["rvos", "--data", "synthetic_refytvos", "--data-override", f"reader.root={root}"]
    scores = _scores([*args, "reader.split=valid"], tmp_path / "s.json")
    first_j = 1.0 if not moving else (80 / 120 + 60 / 140 + 40 / 160) / 3
    assert scores["expressions"] == 2
    assert scores["J"] == pytest.approx((first_j + 1 / 3) / 2)
    if not moving:
        assert scores["J&F"] == pytest.approx((1.0 + 1 / 3) / 2)


@pytest.mark.parametrize(
    "args",
    [
        ["det", "--gt", "gt.json", "--images", "images", "--results", "det.json"],
        ["insseg", "--gt", "gt.json", "--images", "images", "--results", "insseg.json"],
        ["rec", "--data", "synthetic_refcoco"],
        ["res", "--data", "synthetic_refcoco"],
    ],
)
def test_copy_first_refuses_image_tasks(tmp_path, monkeypatch, caplog, capsys, args) -> None:
    monkeypatch.chdir(tmp_path)
    assert evaluate.main([*args, "--model", "copy-first"]) == 2
    (error,) = [r.getMessage() for r in caplog.records]
    assert error == (
        "error: the copy-first baseline answers the video tasks (sot, vos, mot, mots, vis, "
        f"rvos): {args[0]} has no first frame"
    )
    assert capsys.readouterr().out == ""
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_a_model_never_sees_the_truth() -> None:
    """start_session hands the first-frame truth to a baseline only, and reads it only then."""
    from unipercept.evaluate.baselines import CopyFirstPredictor, start_session

    class Model:
        def start(self, task, prompt, **options):
            return (task, prompt, options)

    def unread():
        raise AssertionError("the truth was read for a model")

    assert start_session(Model(), "mot", ["circle"], unread, score_threshold=0.3) == (
        "mot",
        ["circle"],
        {"score_threshold": 0.3},
    )
    with pytest.raises(ValueError, match="needs the first frame's truth for vis"):
        CopyFirstPredictor().start("vis", ["circle"])
