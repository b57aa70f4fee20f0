"""``evaluate --model copy-first`` end to end on the generated world (seed 0, "small"): mot,
mots, vis and rvos run through the CLI, and each result is checked against the first frame's
ground truth read straight from the dataset files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unipercept import evaluate
from unipercept.evaluate.files import evaluate_files


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from unipercept.data.synthetic import generate

    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", seed=0, size="small")
    return root


def _run(args: list[str], out) -> dict:
    assert evaluate.main([*args, "--model", "copy-first", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def _copied_rows(lines: list[str], frames: int, keep, split: str) -> str:
    """The first frame's kept rows of a MOTChallenge/MOTS gt file repeated for every frame
    (the copy-first answer, built from the file's text)."""
    first = [line.split(split, 1)[1] for line in lines if line.split(split)[0] == "1"]
    return "".join(f"{t}{split}{row}\n" for t in range(1, frames + 1) for row in first if keep(row))


@pytest.mark.parametrize("task", ["mot", "mots"])
def test_copy_first_mot_and_mots_on_the_world(world, tmp_path, task) -> None:
    images = world / "synthetic" / "mot" / "MOTSynth-val"
    gt = world / "synthetic" / task / "MOTSynth-val"
    args = [task, "--gt", str(gt), "--images", str(images), "--results", str(tmp_path / "res")]
    scores = _run(args, tmp_path / "scores.json")
    # Reference: the answer written from the gt text, scored by the same scorer.
    reference = tmp_path / "reference"
    reference.mkdir()
    for sequence in sorted(p for p in images.iterdir() if (p / "img1").is_dir()):
        frames = len(list((sequence / "img1").glob("*.jpg")))
        lines = (gt / sequence.name / "gt" / "gt.txt").read_text().splitlines()
        if task == "mot":  # evaluated rows: conf not 0, class 1; written as results write them
            keep = lambda row: row.split(",")[5:7] == ["1", "1"]  # noqa: E731
            text = _copied_rows(lines, frames, keep, ",")
            text = "".join(
                ",".join([*line.split(",")[:6], "1", "-1", "-1", "-1"]) + "\n"
                for line in text.splitlines()
            )
        else:  # class 2 (pedestrian), not ignore regions
            text = _copied_rows(lines, frames, lambda row: row.split()[1] == "2", " ")
        (reference / f"{sequence.name}.txt").write_text(text)
        written = (tmp_path / "res" / f"{sequence.name}.txt").read_text().splitlines()
        assert len(written) == len(text.splitlines()) > 0
    expected = json.loads(json.dumps({"task": task, **evaluate_files(task, gt, reference)}))
    assert scores == expected
    assert 0.0 < scores["hota"] < 1.0  # the world's objects move


def test_copy_first_vis_on_the_world(world, tmp_path) -> None:
    ytvis = world / "synthetic" / "ytvis"
    results = tmp_path / "vis.json"
    args = ["vis", "--gt", str(ytvis / "valid.json"), "--images", str(ytvis / "valid/JPEGImages")]
    scores = _run([*args, "--results", str(results)], tmp_path / "scores.json")
    content = json.loads((ytvis / "valid.json").read_text())
    predictions = json.loads(results.read_text())
    expected = sorted(
        (a["video_id"], a["category_id"]) for a in content["annotations"] if a["segmentations"][0]
    )
    assert sorted((p["video_id"], p["category_id"]) for p in predictions) == expected
    assert len(expected) < len(content["annotations"])  # some objects start later: not answered
    from unipercept.structures.masks import rle_decode

    for entry in predictions:
        (first,) = {json.dumps(s) for s in entry["segmentations"]}  # one mask in every frame
        assert entry["score"] == 1.0
        truth = [
            a["segmentations"][0]
            for a in content["annotations"]
            if (a["video_id"], a["category_id"]) == (entry["video_id"], entry["category_id"])
            and a["segmentations"][0]
        ]
        mask = rle_decode([json.loads(first)])[0]
        assert any(torch.equal(mask, rle_decode([t])[0]) for t in truth)
    assert set(scores) >= {"ap", "ap50"} and 0.0 <= scores["ap"] <= 1.0


def test_copy_first_rvos_on_the_world(world, tmp_path, monkeypatch) -> None:
    from unipercept import config
    from unipercept.evaluation.davis import VosResult, evaluate_sequence
    from unipercept.structures.masks import RLEMasks

    monkeypatch.setenv("UNIPERCEPT_DATA", str(world))
    args = ["rvos", "--data", "synthetic_refytvos", "--data-override", "reader.split=valid"]
    scores = _run(args, tmp_path / "scores.json")
    composed = config.compose_group_option("data", "synthetic_refytvos")
    composed.reader.split = "valid"
    objects = []
    for sample in config.instantiate(composed).read():
        names = [frame.image.stem for frame in sample.frames]
        for number, expression in enumerate(sample.expressions):
            truth = {}
            for frame, name in zip(sample.frames, names, strict=True):
                masks = frame.instances.masks
                masks = masks.decode() if isinstance(masks, RLEMasks) else masks
                chosen = [int(i) in expression.target_ids for i in frame.instances.track_ids]
                truth[name] = masks[torch.tensor(chosen, dtype=torch.bool)].any(0).numpy()
            first = truth[names[0]].astype(np.uint8)
            predicted = dict.fromkeys(names, first)
            sequence = f"{sample.sample_id}/{number}"
            truth = {name: mask.astype(np.uint8) for name, mask in truth.items()}
            objects.extend(evaluate_sequence(truth, predicted, sequence=sequence))
    reference = VosResult(tuple(objects))
    assert scores["expressions"] == len(objects) > 0
    assert scores["J&F"] == pytest.approx(reference.j_and_f)
    assert 0.0 < scores["J&F"] < 1.0
