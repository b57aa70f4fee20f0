"""scripts/select_task_settings.py: a model's task settings tried on a world of another seed
than the one it was trained and is scored on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scripts import load_script
from unipercept.data.synthetic import generate


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    generate(root / "synthetic", seed=3, size="small")
    return root


def test_the_trained_and_scored_world_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("select_task_settings").main(["--seed", "0", "--data", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--seed 0 is the world the bundled model was trained and is scored on" in (
        capsys.readouterr().err
    )
    assert not any(tmp_path.iterdir())  # nothing generated


def test_a_world_of_another_seed_than_asked_is_refused(world):
    with pytest.raises(SystemExit, match="generated with seed 3, not 4"):
        load_script("select_task_settings").main(
            ["--seed", "4", "--data", str(world), "--tasks", "mot"]
        )


def test_the_settings_tried_are_the_models_settings_in_the_run(world):
    script = load_script("select_task_settings")
    synthetic = world / "synthetic"
    default = script.score("mot", "unipercept-tiny", synthetic, {})
    # A new track needs a score of 1, which no detection has: nothing is tracked.
    never = {"tracker": {"name": "qdtrack", "init_score_threshold": 1.0}}
    assert default > 0.2
    assert script.score("mot", "unipercept-tiny", synthetic, never) == 0.0


def test_every_grid_includes_the_tasks_own_defaults():
    grids = load_script("select_task_settings").GRIDS
    assert {"motion_weight": 0.0} in grids["vos"] and {"motion_weight": 0.0} in grids["sot"]
    trackers = [entry["tracker"] for entry in grids["mot"]]
    assert {"name": "qdtrack", "init_score_threshold": 0.5, "match_score_threshold": 0.3} in (
        trackers
    )
