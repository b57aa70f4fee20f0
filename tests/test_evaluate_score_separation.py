"""``python -m unipercept.evaluate sot|vos --images``: the scores json's ``score_separation``
(how well the answer's score separates hits from misses), on tiny generated datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.scripts import load_script
from unipercept import evaluate
from unipercept.api import Predictor

SEPARATION_KEYS = {
    "threshold",
    "frames",
    "visible_frames",
    "absent_fraction",
    "hits",
    "reported",
    "reported_hits",
    "precision",
    "recall",
    "f1",
    "average_precision",
    "constant_score_average_precision",
    "best_f1",
    "best_f1_threshold",
    "metric_at_threshold",
    "metric_always_answer",
    "curve",
}


def _frames(folder: Path, count: int, suffix: str = ".png") -> None:
    """``count`` 80x64 frames of a yellow square moving right by 4 px a frame."""
    from PIL import Image

    folder.mkdir(parents=True)
    for t in range(count):
        pixels = np.full((64, 80, 3), 30, dtype=np.uint8)
        pixels[20:40, 10 + 4 * t : 30 + 4 * t] = (200, 200, 50)
        Image.fromarray(pixels).save(folder / f"{t + 1:08d}{suffix}")


def _lasot(root: Path, boxes: list[str], occluded: int) -> Path:
    """One LaSOT sequence of ``len(boxes)`` frames, frame ``occluded`` flagged as fully
    occluded."""
    sequence = root / "bird" / "bird-1"
    _frames(sequence / "img", len(boxes))
    (sequence / "groundtruth.txt").write_text("".join(f"{box}\n" for box in boxes))
    flags = ["1" if t == occluded else "0" for t in range(len(boxes))]
    (sequence / "full_occlusion.txt").write_text(",".join(flags) + "\n")
    (sequence / "out_of_view.txt").write_text(",".join("0" for _ in boxes) + "\n")
    return root


def test_sot_copy_first_separation_by_hand(tmp_path, capsys):
    """copy-first answers the first box with score 1 in every frame: frames 1, 2 and 5 are
    hits, frame 3 is a miss (the target moved), frame 4 is absent (occluded)."""
    still, moved = "10,20,20,20", "50,20,20,20"
    lasot = str(_lasot(tmp_path / "lasot", [still, still, still, moved, still, still], 4))
    out = tmp_path / "sot.json"
    args = ["sot", "--gt", lasot, "--images", lasot, "--results", str(tmp_path / "res")]
    assert evaluate.main([*args, "--model", "copy-first", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    separation = scores["score_separation"]
    assert set(separation) == SEPARATION_KEYS
    assert separation["threshold"] == pytest.approx(0.5)  # the sot task's own
    assert (separation["frames"], separation["visible_frames"], separation["hits"]) == (5, 4, 3)
    assert (separation["reported"], separation["reported_hits"]) == (5, 3)
    assert separation["absent_fraction"] == pytest.approx(1 / 5)
    assert (separation["precision"], separation["recall"]) == pytest.approx((3 / 5, 3 / 4))
    # One score, one operating point: AP is that of a constant score.
    assert separation["average_precision"] == pytest.approx(3 / 5 * 3 / 4)
    assert separation["constant_score_average_precision"] == pytest.approx(3 / 5 * 3 / 4)
    assert separation["best_f1_threshold"] == 1.0
    assert separation["metric_at_threshold"] == {
        name: scores[name] for name in ("success_auc", "precision_20", "normalized_precision")
    }
    assert separation["metric_always_answer"] == separation["metric_at_threshold"]
    assert separation["curve"]["recall"][-1] == pytest.approx(3 / 4)  # scores 1 pass 1.0
    printed = capsys.readouterr().out
    assert "score_separation:\n  threshold: 0.500000" in printed
    assert "    threshold: 0.000 0.050 0.100" in printed  # the curve on one line
    # scripts/evaluate_bundled_model.py's score-separation table reads the same json.
    script = load_script("evaluate_bundled_model")
    cells = [c.strip() for c in script.separation_row("sot", "copy-first", scores).split("|")]
    auc = f"{scores['success_auc']:.3f}"
    assert cells[1:-1] == [
        "sot",
        "copy-first",
        "0.50",
        "0.600",
        "0.750",
        "0.667",
        "0.450 (0.450)",
        "0.667 @ 1.000",
        "0.200",
        f"AUC {auc} / {auc}",
    ]


def test_vos_copy_first_separation_by_hand(tmp_path):
    """Two objects over five frames: object 1 stays (four hits); object 2 stays two frames,
    is gone in the fourth (absent) and elsewhere in the fifth (a miss)."""
    from unipercept.evaluation.davis import write_index_folder

    _frames(tmp_path / "images" / "seq", 5, suffix=".jpg")
    names = [f"{t + 1:08d}" for t in range(5)]
    indices = {}
    for t, name in enumerate(names):
        index = np.zeros((64, 80), dtype=np.uint8)
        index[2:12, 2:12] = 1
        if t < 3:
            index[40:60, 40:60] = 2
        elif t == 4:
            index[40:60, 5:25] = 2
        indices[name] = index
    write_index_folder(tmp_path / "gt" / "seq", indices)
    out = tmp_path / "vos.json"
    args = ["vos", "--gt", str(tmp_path / "gt"), "--images", str(tmp_path / "images")]
    args += ["--results", str(tmp_path / "res"), "--model", "copy-first"]
    assert evaluate.main([*args, "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    separation = scores["score_separation"]
    assert set(separation) == SEPARATION_KEYS
    assert (separation["frames"], separation["visible_frames"], separation["hits"]) == (8, 7, 6)
    assert separation["absent_fraction"] == pytest.approx(1 / 8)
    assert (separation["precision"], separation["recall"]) == pytest.approx((6 / 8, 6 / 7))
    assert separation["metric_at_threshold"] == {"J&F": scores["J&F"]}
    assert separation["metric_always_answer"] == {"J&F": pytest.approx(scores["J&F"])}


def _model(weights: Path) -> list[str]:
    return ["--model", "unipercept_tiny", "--weights", str(weights), "--short-size", "64"]


def test_sot_model_separation_is_consistent(tmp_path, tiny_weights):
    """An untrained model: whatever its scores, the json's numbers agree with each other and
    with the result file it wrote."""
    boxes = [f"{10 + 4 * t},20,20,20" for t in range(8)]
    lasot = str(_lasot(tmp_path / "lasot", boxes, occluded=5))
    out = tmp_path / "sot.json"
    args = ["sot", "--gt", lasot, "--images", lasot, "--results", str(tmp_path / "res")]
    args += [*_model(tiny_weights), "--max-size", "96", "--threads", "1"]
    assert evaluate.main([*args, "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    separation = scores["score_separation"]
    assert set(separation) == SEPARATION_KEYS
    assert (separation["frames"], separation["visible_frames"]) == (7, 6)
    rows = np.loadtxt(tmp_path / "res" / "bird-1.txt", delimiter=",")
    assert separation["reported"] == int((rows[1:] != 0).any(axis=1).sum())
    assert separation["reported_hits"] <= min(separation["reported"], separation["hits"])
    if separation["reported"]:
        assert separation["precision"] == separation["reported_hits"] / separation["reported"]
    assert separation["recall"] == separation["reported_hits"] / 6
    curve = separation["curve"]
    assert len(curve["threshold"]) == len(curve["precision"]) == len(curve["recall"]) == 21
    assert curve["recall"][0] == separation["hits"] / 6  # threshold 0 reports every answer
    assert 0.0 <= separation["average_precision"] <= separation["hits"] / 6
    assert separation["metric_at_threshold"]["success_auc"] == scores["success_auc"]
    assert 0.0 <= separation["metric_always_answer"]["success_auc"] <= 1.0


@pytest.mark.parametrize("task", ["sot", "vos"])
def test_threshold_zero_session_gives_the_tasks_answers(task):
    """The answers kept at threshold 0 (with ``answering_options``' update threshold), filtered
    by the task's threshold, are the task's own, template updates included. On the bundled
    model and its sample video, with the score threshold at the median score, the update
    threshold below it and an update every other frame; updates change the answers there."""
    import torch

    from unipercept import load_model
    from unipercept.assets import samples
    from unipercept.data.video import open_frames
    from unipercept.modeling.pretrained import bundled_models
    from unipercept.structures import AnnotationPrompt

    if "unipercept-tiny" not in bundled_models():
        pytest.skip("the bundled model is not built")
    torch.set_num_threads(1)
    model, sample = load_model(), samples()
    with open_frames(sample.video) as source:
        frames = [frame for _, frame in source]
    x, y, w, h = sample.video_target_boxes[0]
    prompt = AnnotationPrompt(frames[0], box=[x, y, x + w, y + h])

    def run(**options):
        with Predictor(model).start(task, prompt, update_interval=2, **options) as session:
            return [session.step(frame) for frame in frames]

    scores = torch.cat([a.scores for a in run(score_threshold=0.0, update_threshold=0.0)[1:]])
    threshold, update = float(scores.median()), float(scores.quantile(0.25))
    own = run(score_threshold=threshold, update_threshold=update)
    kept = run(score_threshold=0.0, update_threshold=max(update, threshold))
    reported = 0
    for answer, every in zip(own, kept, strict=True):
        filtered = every[every.scores >= threshold]
        reported += len(filtered)
        assert torch.equal(answer.scores, filtered.scores)
        assert torch.equal(answer.boxes, filtered.boxes)
        if task == "vos":
            assert torch.equal(answer.masks, filtered.masks)
    assert 0 < reported < len(frames)  # the threshold left answers out
    never = run(score_threshold=0.0, update_threshold=1.0)  # no template update
    assert not torch.equal(
        torch.cat([a.scores for a in never]), torch.cat([a.scores for a in kept])
    )
