"""save_pretrained / from_pretrained / load_model: a folder of safetensors weights and the
resolved config that rebuilds the same model, never unpickling anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import unipercept
from unipercept import config
from unipercept.data.preprocess import ImagePreprocessor
from unipercept.modeling import UniPercept
from unipercept.modeling.pretrained import (
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    PretrainedError,
    bundled_models,
    from_pretrained,
    load_model,
    save_pretrained,
)
from unipercept.structures import CategoryPrompt

TEXT = "prompt_encoders.category.text.model."


def _changed(model: UniPercept) -> UniPercept:
    """As training would leave it: every trained tensor differs from a fresh build, the frozen
    text encoder and the unused ImageNet classifiers do not."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith(TEXT) and ".classifier." not in name:
                parameter.add_(0.01 * torch.randn_like(parameter))
    return model


def model_config():
    return config.compose_group_option("model", "unipercept_tiny")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[UniPercept, Path]:
    cfg = model_config()
    torch.manual_seed(0)
    model = _changed(config.instantiate(cfg)).eval()
    folder = tmp_path_factory.mktemp("pretrained") / "tiny"
    save_pretrained(model, folder, config=cfg, preprocess={"short_size": 96, "max_size": 128})
    return model, folder


def _outputs(model: UniPercept) -> torch.Tensor:
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8)
    batch = ImagePreprocessor(short_size=96, max_size=128)([image])
    with torch.no_grad():
        output = model(batch, [CategoryPrompt.parse("circle. square")])
    return torch.cat([output.logits[-1].flatten(), output.boxes[-1].flatten()])


def test_a_saved_model_loads_back_with_the_same_outputs(saved):
    model, folder = saved
    loaded = from_pretrained(folder)
    assert not loaded.training
    assert torch.equal(_outputs(model), _outputs(loaded))
    assert loaded.preprocess_settings == {"short_size": 96, "max_size": 128}
    assert loaded.default_preprocess().short_size == 96
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_installed_pretrained_weights_are_not_stored_but_checked(saved):
    _, folder = saved
    stored = load_file(str(folder / WEIGHTS_FILE))
    meta = json.loads((folder / META_FILE).read_text())
    # Of the text encoder only tensors filled with one value are stored (the init code makes
    # those, not the installed package).
    text = [t for name, t in stored.items() if name.startswith(TEXT)]
    assert all(bool((t == t.flatten()[0]).all()) for t in text)
    assert any(name.startswith(TEXT) for name in meta["excluded"])
    assert "backbone.classifier.1.weight" in meta["excluded"]
    assert "neck.input_proj.0.0.weight" in stored  # trained: stored
    # The shared text encoder of the expression prompts is one tensor under two names.
    assert any(alias.startswith("prompt_encoders.expression.") for alias in meta["aliases"])
    assert (folder / WEIGHTS_FILE).stat().st_size < 40e6


def test_changed_pretrained_weights_are_detected(saved, tmp_path):
    _, folder = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in (CONFIG_FILE, WEIGHTS_FILE, META_FILE):
        (copy / file).write_bytes((folder / file).read_bytes())
    meta = json.loads((copy / META_FILE).read_text())
    name = next(n for n in meta["excluded"] if n.startswith(TEXT))
    meta["excluded"][name] = "0" * 64
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match=name.replace(".", r"\.")):
        from_pretrained(copy)


@pytest.mark.parametrize("damage", ["missing", "truncated", "pickle", "shape"])
def test_damaged_folders_are_refused_naming_the_file(saved, tmp_path, damage):
    _, folder = saved
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in (CONFIG_FILE, WEIGHTS_FILE, META_FILE):
        (copy / file).write_bytes((folder / file).read_bytes())
    weights = copy / WEIGHTS_FILE
    if damage == "missing":
        weights.unlink()
        match = "no model.safetensors"
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
        match = "not a safetensors file"
    elif damage == "pickle":
        torch.save({"a": torch.zeros(1)}, weights)  # a pickle under the safetensors name
        match = "not a safetensors file"
    else:
        text = (copy / CONFIG_FILE).read_text().replace("hidden_dim: 64", "hidden_dim: 32")
        (copy / CONFIG_FILE).write_text(text)
        match = "has shape"
    with pytest.raises(PretrainedError, match=match):
        from_pretrained(copy)


def test_unknown_names_list_the_bundled_models(tmp_path):
    with pytest.raises(PretrainedError, match="not a bundled model"):
        load_model("no-such-model")
    with pytest.raises(PretrainedError, match="no unipercept.json"):
        load_model(tmp_path)


def test_saving_replaces_a_folder_only_when_complete(saved, tmp_path, monkeypatch):
    model, _ = saved
    target = save_pretrained(model, tmp_path / "target", config=model_config())
    (target / "keep.txt").write_text("earlier")
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    import unipercept.modeling.pretrained as pretrained

    monkeypatch.setattr(pretrained, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(model, target, exclude_pretrained=False, config=model_config())
    assert (target / "keep.txt").read_text() == "earlier"
    assert {name: (target / name).read_bytes() for name in os.listdir(target)} == before
    assert sorted(os.listdir(tmp_path)) == ["target"]


def test_the_model_methods_and_the_top_level_loader_agree(saved, tmp_path):
    model, folder = saved
    loaded = UniPercept.from_pretrained(folder)
    again = loaded.save_pretrained(tmp_path / "again")  # config and preprocess remembered
    assert json.loads((again / META_FILE).read_text())["preprocess"]["short_size"] == 96
    assert torch.equal(_outputs(unipercept.load_model(again)), _outputs(model))


@pytest.mark.skipif("unipercept-tiny" not in bundled_models(), reason="bundled model not built")
def test_the_bundled_model_is_small_and_loads_offline():
    folder = bundled_models()["unipercept-tiny"]
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 50e6
    model = unipercept.load_model()
    assert isinstance(model, UniPercept) and model.pretrained_path == folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_a_device_the_machine_lacks_is_a_clear_error_before_loading(saved):
    _, folder = saved
    with pytest.raises(ValueError, match="'cuda': CUDA is not available on this machine"):
        load_model(folder, device="cuda")
    with pytest.raises(ValueError, match="'gpu': expected cpu, cuda or cuda:N"):
        load_model(folder, device="gpu")
