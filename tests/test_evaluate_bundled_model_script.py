"""scripts/evaluate_bundled_model.py's ``--seed`` and ``--part``: scoring on a world the model
never saw, its training splits included, on tiny generated worlds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.scripts import load_script
from unipercept.data.synthetic import generate

PATH_OPTIONS = ("--gt", "--images", "--sequences")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval-seed3")
    generate(root / "data" / "synthetic", seed=3, size="small")
    return root


def test_training_splits_of_the_trained_world_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("evaluate_bundled_model").main(["--part", "train", "--work", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "seed 0's training splits are what the bundled model was trained on" in (
        capsys.readouterr().err
    )
    assert not any(tmp_path.iterdir())  # nothing generated


def test_a_world_of_another_seed_is_refused(work, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("evaluate_bundled_model").main(
            ["--seed", "4", "--work", str(work), "--tasks", "mot"]
        )
    assert exit_info.value.code == 2
    assert "was generated with seed 3, not 4" in capsys.readouterr().err


@pytest.mark.parametrize("part", ["val", "train"])
def test_every_command_reads_the_part_asked_for(work, part):
    world = work / "data" / "synthetic"
    other = {"val": "train", "train": "val"}[part]
    commands = load_script("evaluate_bundled_model").commands(str(world), "out", "m", part)
    for task, arguments in commands.items():
        paths = [arguments[i + 1] for i, a in enumerate(arguments) if a in PATH_OPTIONS]
        for path in paths:
            assert Path(path).exists(), (task, path)
        splits = [a for a in arguments if a.startswith("reader.split=")]
        assert paths or splits, task
        named = " ".join([str(Path(path).relative_to(world)) for path in paths] + splits)
        if task == "sot":
            expected = "training_set" if part == "train" else "testing_set"
            assert expected in named, (task, named)
        elif task in ("vis", "rvos"):
            assert ("train" if part == "train" else "valid") in named, (task, named)
        else:
            assert part in named and other not in named, (task, named)
    # Each part's sequences are their own: the MOT folders differ.
    mot = commands["mot"][commands["mot"].index("--gt") + 1]
    assert Path(mot).name == f"MOTSynth-{part}"


def test_both_parts_score_side_by_side(work, capsys):
    """val then train in one work folder: each part's results and scores stay apart (a stale
    val result would otherwise be refused as a sequence without ground truth)."""
    script = load_script("evaluate_bundled_model")
    for part in ("val", "train"):
        arguments = ["--seed", "3", "--part", part, "--work", str(work), "--tasks", "mot"]
        assert script.main([*arguments, "--model", "copy-first"]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| mot |")]
    assert len(rows) == 2
    assert rows[0].endswith("`python scripts/evaluate_bundled_model.py --tasks mot --seed 3` |")
    assert "--tasks mot --seed 3 --part train`" in rows[1]
    val = json.loads((work / "scores" / "mot.json").read_text())
    train = json.loads((work / "scores-train" / "mot.json").read_text())
    assert sorted(val["sequences"]) == ["MOTSynth-03"]  # the small preset's one val sequence
    assert sorted(train["sequences"]) == ["MOTSynth-01", "MOTSynth-02"]
    assert sorted(p.name for p in (work / "results-train" / "mot").glob("*.txt")) == [
        "MOTSynth-01.txt",
        "MOTSynth-02.txt",
    ]
