"""A model's own task settings (``unipercept.json``'s ``"tasks"``): saved and loaded with the
model, the defaults its tasks run with under the caller's options, plain data only, and
checked, naming the file and the entry, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unipercept import config
from unipercept.api import Predictor, resolve_task
from unipercept.modeling.pretrained import (
    META_FILE,
    PretrainedError,
    from_pretrained,
    save_pretrained,
)
from unipercept.structures import AnnotationPrompt, CategoryPrompt
from unipercept.tasks import TASKS
from unipercept.tasks.settings import check_task_settings
from unipercept.tracking import QDTrack

SETTINGS = {
    "vos": {"motion_weight": 0.75, "motion_sigma": 0.5, "motion_threshold": 0.5},
    "mot": {
        "score_threshold": 0.2,
        "tracker": {"name": "qdtrack", "init_score_threshold": 0.4, "match_score_threshold": 0.2},
    },
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    cfg = config.compose_group_option("model", "unipercept_tiny")
    torch.manual_seed(0)
    model = config.instantiate(cfg).eval()
    model.task_settings = SETTINGS
    target = tmp_path_factory.mktemp("settings") / "tiny"
    return save_pretrained(model, target, config=cfg, preprocess={"short_size": 64, "max_size": 96})


def _with_tasks(folder: Path, tmp_path: Path, tasks: object) -> Path:
    """A copy of the saved model whose metadata says ``tasks``."""
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    meta = json.loads((copy / META_FILE).read_text())
    meta["tasks"] = tasks
    (copy / META_FILE).write_text(json.dumps(meta))
    return copy


def test_settings_are_saved_and_loaded_with_the_model(folder):
    assert json.loads((folder / META_FILE).read_text())["tasks"] == SETTINGS
    assert from_pretrained(folder).task_settings == SETTINGS


def test_the_models_settings_are_the_defaults_under_the_callers_options(folder):
    predictor = Predictor.from_pretrained(str(folder))
    vos = resolve_task("vos", model=predictor.model)
    assert (vos.motion_weight, vos.motion_sigma, vos.motion_threshold) == (0.75, 0.5, 0.5)
    assert resolve_task("vos", model=predictor.model, motion_weight=0.0).motion_weight == 0.0
    sot = resolve_task("sot", model=predictor.model)  # no settings: the task's own defaults
    assert sot.motion_weight == 0.0
    assert resolve_task("vos").motion_weight == 0.0  # no model: the task's own defaults
    frame = torch.zeros(3, 64, 96, dtype=torch.uint8)
    session = predictor.start("vos", AnnotationPrompt(frame, box=[4, 4, 20, 20]))
    assert (session.motion_weight, session.motion_sigma) == (0.75, 0.5)


def test_a_tracker_setting_gives_every_video_its_own_configured_tracker(folder):
    predictor = Predictor.from_pretrained(str(folder))
    sessions = [predictor.start("mot", CategoryPrompt(["circle"])) for _ in range(2)]
    first, second = (session.tracker for session in sessions)
    assert isinstance(first, QDTrack) and first is not second
    assert (first.init_score_threshold, first.match_score_threshold) == (0.4, 0.2)
    assert first.match_threshold == QDTrack().match_threshold  # the rest: QDTrack's defaults
    assert sessions[0].detector.score_threshold == 0.2


@pytest.mark.parametrize(
    "tasks, message",
    [
        ({"vos": {"motion_weight": 2.0}}, r"tasks\.vos: motion_weight must be in \[0, 1\]"),
        ({"vos": {"nonsense": 1}}, r"tasks\.vos sets nonsense, which vos does not take"),
        ({"detect": {}}, r"tasks\.detect is not a task"),
        ({"mot": {"tracker": {"name": "os.system"}}}, r"unknown tracker 'os\.system'"),
        ({"mot": {"tracker": {"_target_": "os.system"}}}, r"tasks\.mot\.tracker must be"),
        ({"mot": {"tracker": {"name": "qdtrack", "max_lost": -1}}}, r"max_lost must be >= 0"),
        ({"mot": {"tracker": {"name": "qdtrack", "speed": 1}}}, r"tasks\.mot\.tracker: .*speed"),
        ({"vos": 0.5}, r"tasks\.vos must be a mapping"),
    ],
)
def test_bad_settings_fail_before_any_work_naming_the_file_and_entry(
    folder, tmp_path, tasks, message
):
    copy = _with_tasks(folder, tmp_path, tasks)
    with pytest.raises(ValueError, match=message) as error:
        Predictor.from_pretrained(str(copy))
    assert str(copy / META_FILE) in str(error.value)


@pytest.mark.parametrize(
    "tasks", [[1, 2], {"vos": {"motion_weight": [0.5]}}, {"mot": {"tracker": {"a": {"b": 1}}}}]
)
def test_settings_that_are_not_plain_data_are_refused_when_loading(folder, tmp_path, tasks):
    copy = _with_tasks(folder, tmp_path, tasks)
    with pytest.raises(PretrainedError, match="plain data|must map task names"):
        from_pretrained(copy)


def test_save_refuses_settings_that_are_not_plain_data(folder, tmp_path):
    model = from_pretrained(folder)
    model.task_settings = {"mot": {"tracker": QDTrack}}
    with pytest.raises(PretrainedError, match="plain data"):
        save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_task_takes_an_empty_entry():
    assert check_task_settings({name: {} for name in TASKS}, TASKS, "here") == {
        name: {} for name in TASKS
    }
