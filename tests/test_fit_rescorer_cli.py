"""python -m unipercept.fit_rescorer: a model folder gains a fitted re-scorer; bad datasets,
models and destinations are refused with one line and exit 2."""

from __future__ import annotations

import pytest
import torch

from unipercept import fit_rescorer
from unipercept.modeling.pretrained import load_model, save_pretrained


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from unipercept.data.synthetic import generate

    root = tmp_path_factory.mktemp("world")
    generate(root / "synthetic", seed=0, size="small")
    return root


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A random unipercept_tiny without a re-scorer, saved as a model folder."""
    from omegaconf import OmegaConf

    from unipercept import config

    cfg = config.compose_group_option("model", "unipercept_tiny")
    torch.manual_seed(0)
    model = config.instantiate(cfg)
    folder = tmp_path_factory.mktemp("model") / "tiny"
    return save_pretrained(
        model,
        folder,
        config=OmegaConf.to_container(cfg),
        preprocess={"short_size": 64, "max_size": 96},
    )


def test_a_model_folder_gains_a_fitted_rescorer(world, model_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIPERCEPT_DATA", str(world))
    before = load_model(model_folder)
    assert before.rescorer is None
    out = tmp_path / "with-rescorer"
    args = [str(model_folder), str(out), "--data", "synthetic_refcoco", "--steps", "3"]
    assert fit_rescorer.main(args) == 0
    after = load_model(out)
    assert after.rescorer is not None and after.config["referring_rescorer"] is True
    assert after.preprocess_settings == before.preprocess_settings
    # Everything else is the model it started from.
    new = dict(after.named_parameters())
    for name, parameter in before.named_parameters():
        assert torch.equal(parameter, new[name]), name
    # An earlier save is replaced: the command runs again on its own output.
    assert (
        fit_rescorer.main([str(out), str(out), "--data", "synthetic_refcoco", "--steps", "1"]) == 0
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--data", "synthetic_coco"], "not expressions"),
        (["--data", "synthetic_refcoco", "--steps", "0"], "--steps"),
        (["--data", "synthetic_refcoco", "--data-override", "reader.split"], "key=value"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    world, model_folder, tmp_path, monkeypatch, caplog, arguments, message
):
    monkeypatch.setenv("UNIPERCEPT_DATA", str(world))
    out = tmp_path / "out"
    assert fit_rescorer.main([str(model_folder), str(out), *arguments]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0]
    assert not out.exists()


def test_a_missing_model_and_a_foreign_destination_are_refused(
    world, model_folder, tmp_path, monkeypatch
):
    monkeypatch.setenv("UNIPERCEPT_DATA", str(world))
    missing = tmp_path / "nothing-here"
    assert (
        fit_rescorer.main([str(missing), str(tmp_path / "o"), "--data", "synthetic_refcoco"]) == 2
    )
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    args = [str(model_folder), str(foreign), "--data", "synthetic_refcoco", "--steps", "1"]
    assert fit_rescorer.main(args) == 2
    assert (foreign / "mine.txt").read_text() == "keep me"
