"""A training run's checkpoint becomes a model: ``python -m unipercept.export RUN OUT`` writes a
model folder that answers exactly as the checkpoint does, ``load_model`` / ``predict
--checkpoint`` / ``evaluate --model`` take the run itself, ``checkpoints/best`` wins over the
newest step, and a path that holds no usable checkpoint is refused with one line (exit 2)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from unipercept.api import Predictor
from unipercept.data.synthetic import generate
from unipercept.export.cli import main as export_main

# Two steps of the tiny model, a checkpoint after each; the text encoder frozen as the bundled
# model's recipe does (a smaller trainer state).
TRAIN = [
    "stage=1_pretrain",
    "stage/mixture=synthetic_stage1",
    "model=unipercept_tiny",
    "trainer=cpu_tiny",
    "stage.warmup_steps=1",
    "stage.milestones=[]",
    "stage.init_from=null",
    "stage.max_steps=2",
    "trainer.checkpoint_every=1",
    "stage.frozen=[prompt_encoders.category.text.model.]",
]
PROMPT = "circle. square. triangle. star. hexagon. ring"
STEP_1, STEP_2 = "step_00000001", "step_00000002"
# Only stops a hung process; the run takes seconds.
HANG_TIMEOUT_S = 3600


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", seed=0, size="small")
    return root


@pytest.fixture(scope="module")
def run(world, tmp_path_factory) -> Path:
    """A training run folder with checkpoints after steps 1 and 2 (no best)."""
    output = tmp_path_factory.mktemp("runs") / "tiny"
    env = {**os.environ, "UNIPERCEPT_DATA": str(world), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "unipercept.train", *TRAIN, f"output_dir={output}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == [STEP_1, STEP_2]
    return output


@pytest.fixture(scope="module")
def image(world) -> Path:
    return sorted((world / "synthetic" / "coco" / "val").glob("*.jpg"))[0]


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model"
    assert export_main([str(run), str(out)]) == 0
    return out


def link_checkpoint(source: Path, target: Path) -> Path:
    """A copy of a checkpoint folder made of hard links (no bytes copied)."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        os.link(file, target / file.name)
    return target


def copy_run(run: Path, target: Path, *, best: str | None = None) -> Path:
    """``run``'s checkpoints under ``target``, with ``checkpoints/best`` a copy of ``best``."""
    for step in (STEP_1, STEP_2):
        link_checkpoint(run / "checkpoints" / step, target / "checkpoints" / step)
    if best is not None:
        link_checkpoint(run / "checkpoints" / best, target / "checkpoints" / "best")
    return target


def detections(model, image: Path, preprocess=None) -> dict[str, torch.Tensor]:
    predictor = Predictor(model, preprocess=preprocess)
    found = predictor.predict(image, PROMPT, task="det", score_threshold=0.0)
    return {"boxes": found.boxes, "scores": found.scores, "labels": found.labels}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_exported_folder_answers_as_the_checkpoint_and_its_weights(run, exported, image):
    from unipercept import config, load_model
    from unipercept.data.preprocess import ImagePreprocessor

    meta = json.loads((exported / "unipercept.json").read_text())
    # The training resolution (cpu_tiny: short_sizes [128], max_size 192) and the source named.
    assert meta["preprocess"] == {"short_size": 128, "max_size": 192}
    assert str(run.resolve()) in meta["description"]
    assert f"{STEP_2}, step 2" in meta["description"]
    # The folder's config is the run's model section, which builds without Hydra.
    run_config = yaml.safe_load((run / "checkpoints" / STEP_2 / "config.yaml").read_text())
    assert yaml.safe_load((exported / "config.yaml").read_text()) == run_config["model"]

    from_folder = load_model(str(exported))
    from_run = load_model(run)  # the newest step: there is no best
    assert from_run.checkpoint_path == run / "checkpoints" / STEP_2
    # The reference: the model Hydra composes from conf/, with the checkpoint's tensors.
    reference = config.instantiate(config.compose_group_option("model", "unipercept_tiny"))
    stored = load_file(str(run / "checkpoints" / STEP_2 / "model.safetensors"))
    missing, unexpected = reference.load_state_dict(stored, strict=False)
    # A tensor shared by two modules is stored once: the expression prompts' text encoder is
    # the category prompts'.
    assert not unexpected and all(k.startswith("prompt_encoders.expression.text.") for k in missing)
    reference.eval()
    expected = reference.state_dict()
    for model in (from_folder, from_run):
        state = model.state_dict()
        assert state.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(state[name], tensor), name

    want = detections(reference, image, ImagePreprocessor(short_size=128, max_size=192))
    assert len(want["scores"]) > 0
    assert_same(detections(from_folder, image), want)  # at its recorded resolution
    assert_same(detections(from_run, image), want)


def test_export_again_into_its_own_folder_replaces_it(run, tmp_path):
    out = tmp_path / "model"
    assert export_main([str(run), str(out), "--short-size", "96", "--max-size", "160"]) == 0
    (out / "README.md").write_text("mine")
    assert export_main([str(run / "checkpoints" / STEP_1), str(out), "--description", "v1"]) == 0
    meta = json.loads((out / "unipercept.json").read_text())
    assert meta["preprocess"] == {"short_size": 128, "max_size": 192}
    assert meta["description"] == "v1"
    assert (out / "README.md").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.yaml",
        "model.safetensors",
        "unipercept.json",
    ]


def test_best_wins_over_the_newest_step(run, tmp_path):
    from unipercept import load_model
    from unipercept.export import find_checkpoint

    first = load_file(str(run / "checkpoints" / STEP_1 / "model.safetensors"))
    second = load_file(str(run / "checkpoints" / STEP_2 / "model.safetensors"))
    assert any(not torch.equal(first[k], second[k]) for k in first), "step 2 did not train"

    assert find_checkpoint(run) == run / "checkpoints" / STEP_2
    assert find_checkpoint(run / "checkpoints") == run / "checkpoints" / STEP_2
    step_folder = run / "checkpoints" / STEP_1
    assert find_checkpoint(step_folder) == step_folder
    assert find_checkpoint(step_folder / "model.safetensors") == step_folder

    with_best = copy_run(run, tmp_path / "run", best=STEP_1)
    best = with_best / "checkpoints" / "best"
    assert find_checkpoint(with_best) == best
    assert find_checkpoint(with_best / "checkpoints") == best

    model = load_model(with_best)
    assert model.checkpoint_path == best and model.checkpoint_step == 1
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in first.items())

    # best.json (unipercept.engine.best) gives the score that made it the best.
    record = {"step": 1, "metric": "bbox_ap", "value": 0.25, "initial": 0.0}
    (with_best / "checkpoints" / "best.json").write_text(json.dumps(record))
    out = tmp_path / "model"
    assert export_main([str(with_best), str(out)]) == 0
    description = json.loads((out / "unipercept.json").read_text())["description"]
    assert str(with_best.resolve()) in description
    assert "(checkpoint best, step 1, bbox_ap 0.25)" in description


def _evil_config(checkpoint: Path, marker: Path) -> None:
    config = yaml.safe_load((checkpoint / "config.yaml").read_text())
    config["model"]["backbone"] = {"_target_": "os.makedirs", "name": str(marker)}
    (checkpoint / "config.yaml").unlink()  # a hard link: the run's own file stays
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(config))


def _replace(checkpoint: Path, name: str, data: bytes) -> None:
    (checkpoint / name).unlink()  # a hard link: the run's own file stays
    (checkpoint / name).write_bytes(data)


def _wider_model(checkpoint: Path) -> None:
    config = yaml.safe_load((checkpoint / "config.yaml").read_text())
    config["model"]["hidden_dim"] = 32
    config["model"]["text_encoder"]["hidden_dim"] = 32
    (checkpoint / "config.yaml").unlink()
    (checkpoint / "config.yaml").write_text(yaml.safe_dump(config))


def _break(case: str, run: Path, tmp_path: Path) -> Path:
    """A source for ``case``, made from hard links to ``run``'s files."""
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    if case == "run without checkpoints yet":
        (tmp_path / "run" / "checkpoints").mkdir(parents=True)
        return tmp_path / "run"
    if case == "best without weights":
        source = copy_run(run, tmp_path / "run", best=STEP_1)
        (source / "checkpoints" / "best" / "model.safetensors").unlink()
        return source
    checkpoint = link_checkpoint(run / "checkpoints" / STEP_2, tmp_path / STEP_2)
    weights = (checkpoint / "model.safetensors").read_bytes()
    state = (checkpoint / "trainer_state.pt").read_bytes()
    if case == "truncated weights":
        _replace(checkpoint, "model.safetensors", weights[: len(weights) // 2])
    elif case == "truncated trainer state":
        _replace(checkpoint, "trainer_state.pt", state[: len(state) // 2])
    elif case == "config not yaml":
        _replace(checkpoint, "config.yaml", b"model: [unclosed\n")
    elif case == "config without a model":
        _replace(checkpoint, "config.yaml", b"trainer: {max_size: 192}\n")
    elif case == "untrusted target":
        _evil_config(checkpoint, tmp_path / "pwned")
    elif case == "weights of another model":
        _wider_model(checkpoint)
    return checkpoint


REFUSALS = {
    "empty folder": r"empty: not a model folder \(no unipercept\.json\) nor a training run's",
    "run without checkpoints yet": r"run/checkpoints: no complete checkpoint yet",
    "best without weights": r"checkpoints/best: the run's best checkpoint holds no model\.safe",
    "truncated weights": r"a damaged checkpoint: cannot read safetensors file .*model\.safet",
    "truncated trainer state": r"trainer_state\.pt: a damaged trainer state, not loadable with",
    "config not yaml": r"config\.yaml: not a readable YAML config",
    "config without a model": r"config\.yaml: no model: section with a _target_",
    "untrusted target": r"config\.yaml: model\.backbone: _target_ 'os\.makedirs' is not some",
    "weights of another model": r"model\.safetensors: does not fit the model its config\.yaml",
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_source_without_a_usable_checkpoint_is_refused_in_one_line(case, run, tmp_path, caplog):
    from unipercept import load_model
    from unipercept.export import CheckpointSourceError
    from unipercept.modeling.pretrained import PretrainedError

    source = _break(case, run, tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR, logger="unipercept.export"):
        assert export_main([str(source), str(out)]) == 2
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "\n" not in message
    assert message.startswith("error: ")
    assert re.search(REFUSALS[case], message), message
    assert not out.exists()
    assert not (tmp_path / "pwned").exists()  # the untrusted target was never called
    # The library raises the same, as a PretrainedError that load_model's callers catch.
    with pytest.raises(CheckpointSourceError) as raised:
        load_model(source)
    assert isinstance(raised.value, PretrainedError)
    assert not (tmp_path / "pwned").exists()


def test_a_destination_with_foreign_content_is_refused_before_loading(run, tmp_path, caplog):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with caplog.at_level(logging.ERROR, logger="unipercept.export"):
        assert export_main([str(tmp_path / "no-such-run"), str(out)]) == 2
    (message,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "holds no earlier save" in message and str(out) in message
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep"


def test_a_model_folder_or_bundled_name_is_not_a_run(exported, tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="unipercept.export"):
        assert export_main([str(exported), str(tmp_path / "a")]) == 2
        assert export_main(["unipercept-tiny", str(tmp_path / "b")]) == 2
        assert export_main([str(exported), str(tmp_path / "c"), "--prompt", "x"]) == 2
        assert export_main([str(exported), str(tmp_path / "d.onnx")]) == 2
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "a model folder (unipercept.json), not a training run's checkpoint" in messages[0]
    assert "unipercept-tiny: a bundled model, not a training run" in messages[1]
    assert "--prompt: not for a model folder" in messages[2]
    assert "--prompt is required for .onnx" in messages[3]
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c", "d.onnx"))


def test_predict_and_evaluate_take_a_run_folder(run, exported, image, tmp_path):
    from unipercept.evaluate.predictor import build_predictor
    from unipercept.predict.cli import main as predict_main

    answers = {}
    for name, checkpoint in (("run", run), ("exported", exported)):
        out = tmp_path / name
        args = ["--task", "det", "--prompt", PROMPT, "--input", str(image), "--output", str(out)]
        assert predict_main([*args, "--checkpoint", str(checkpoint), "--score-threshold", "0"]) == 0
        answers[name] = json.loads((out / "predictions.json").read_text())["annotations"]
    assert answers["run"] and answers["run"] == answers["exported"]

    predictor = build_predictor(str(run), None, None, None)
    assert (predictor.preprocess.short_size, predictor.preprocess.max_size) == (128, 192)
    assert predictor.model.checkpoint_path == run / "checkpoints" / STEP_2


def test_graph_outputs_dispatch_to_the_exporters(run, tmp_path, monkeypatch):
    """The CLI hands ``.onnx`` / ``.pt2`` to unipercept.export.onnx with the model of the run
    and the options given (the exporters themselves are tested with their module)."""
    import types

    calls = []

    def export_onnx(model, out, *, task, prompt, height, width, opset=None):
        calls.append(("onnx", model.checkpoint_path, out, task, prompt, height, width, opset))
        return out

    def export_program(model, out, *, task, prompt, height, width):
        calls.append(("pt2", model.checkpoint_path, out, task, prompt, height, width))
        return out

    fake = types.ModuleType("unipercept.export.onnx")
    fake.export_onnx, fake.export_program = export_onnx, export_program
    monkeypatch.setitem(sys.modules, "unipercept.export.onnx", fake)

    onnx, pt2 = tmp_path / "det.onnx", tmp_path / "rec.pt2"
    assert export_main([str(run), str(onnx), "--prompt", "circle. ring", "--opset", "18"]) == 0
    common = ["--task", "rec", "--prompt", "the red circle", "--height", "96", "--width", "64"]
    assert export_main([str(run), str(pt2), *common]) == 0
    newest = run / "checkpoints" / STEP_2
    assert calls == [
        ("onnx", newest, onnx, "det", "circle. ring", 128, 128, 18),  # the training size
        ("pt2", newest, pt2, "rec", "the red circle", 96, 64),
    ]


@pytest.mark.slow  # a strict torch.export trace: minutes on a CPU
@pytest.mark.parametrize("suffix", [".onnx", ".pt2"])
def test_a_model_folder_exports_as_a_graph(exported, tmp_path, suffix):
    """The real exporters through the CLI (``unipercept.export.onnx``), from an exported run
    at its default canvas: the file is written and reads back."""
    out = tmp_path / f"det{suffix}"
    assert export_main([str(exported), str(out), "--task", "det", "--prompt", "circle. ring"]) == 0
    from unipercept.export.graph import ExportMetadata
    from unipercept.export.onnx import program_metadata

    if suffix == ".onnx":
        onnx = pytest.importorskip("onnx")
        graph = onnx.load(str(out))
        onnx.checker.check_model(graph)
        meta = ExportMetadata.from_strings({p.key: p.value for p in graph.metadata_props})
    else:
        meta = program_metadata(out)
    assert (meta.task, meta.prompt) == ("det", "circle. ring")
    # The exported run's inference size (trainer.short_sizes [128]) is the default canvas.
    assert (meta.height, meta.width) == (128, 128)
