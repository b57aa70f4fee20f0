"""A model folder is data: its config builds only the project's own classes, its weights are
checked against their recorded SHA-256, and saving never deletes what the library did not
write."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import unipercept
from unipercept import config
from unipercept.config import AllowedTarget, UntrustedConfigError, build_allowed
from unipercept.modeling.pretrained import (
    CONFIG_FILE,
    META_FILE,
    WEIGHTS_FILE,
    PretrainedError,
    from_pretrained,
    save_pretrained,
)


class _Payload:
    """Unpickling it runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    cfg = config.compose_group_option("model", "unipercept_tiny")
    torch.manual_seed(0)
    model = config.instantiate(cfg).eval()
    return save_pretrained(model, tmp_path_factory.mktemp("safety") / "tiny", config=cfg)


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def _payloads(marker: Path) -> dict[str, dict]:
    pickled = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    return {
        # The reported exploit: an inline pickle through torch.load(weights_only=False).
        "torch.load": {
            "_target_": "torch.load",
            "f": {
                "_target_": "io.BytesIO",
                "initial_bytes": {"_target_": "base64.b64decode", "s": pickled},
            },
            "weights_only": False,
        },
        "pickle.loads": {
            "_target_": "pickle.loads",
            "data": {"_target_": "base64.b64decode", "s": pickled},
        },
        "os.system": {"_target_": "os.system", "command": f"touch {marker}"},
        "subprocess": {"_target_": "subprocess.run", "args": ["touch", str(marker)]},
        "exec": {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w')"]},
        # A module reached through a project module's attributes.
        "attribute chain": {
            "_target_": "unipercept.modeling.pretrained.os.system",
            "command": f"touch {marker}",
        },
        # A project function that is not a model builder (it would instantiate anything).
        "project function": {
            "_target_": "unipercept.config.instantiate",
            "config": {"_target_": "os.system", "command": f"touch {marker}"},
        },
        # An allowed third-party call with an argument that loads code from disk.
        "remote code": {
            "_target_": "transformers.AutoBackbone.from_config",
            "trust_remote_code": True,
            "config": {
                "_target_": "transformers.ResNetConfig",
                "auto_map": {"AutoBackbone": "evil.Backbone"},
            },
        },
        "partial": {
            "_target_": "unipercept.modeling.backbone.MobileNetV2",
            "_partial_": True,
        },
    }


@pytest.mark.parametrize(
    "payload",
    [
        "torch.load",
        "pickle.loads",
        "os.system",
        "subprocess",
        "exec",
        "attribute chain",
        "project function",
        "remote code",
        "partial",
    ],
)
@pytest.mark.parametrize("entry", ["load_model", "from_pretrained", "predict", "evaluate"])
def test_a_config_naming_anything_but_the_project_builders_runs_nothing(
    folder, tmp_path, payload, entry, capsys
):
    marker = tmp_path / "PWNED"
    copy = _copy(folder, tmp_path)
    cfg = yaml.safe_load((copy / CONFIG_FILE).read_text())
    cfg["backbone"] = _payloads(marker)[payload]
    (copy / CONFIG_FILE).write_text(yaml.safe_dump(cfg))
    if entry == "load_model":
        with pytest.raises(PretrainedError, match="backbone"):
            unipercept.load_model(copy)
    elif entry == "from_pretrained":
        with pytest.raises(PretrainedError, match="backbone"):
            unipercept.modeling.UniPercept.from_pretrained(copy)
    elif entry == "predict":
        from unipercept.assets import samples
        from unipercept.predict import main as predict

        arguments = ["--task", "det", "--prompt", "circle", "--input", str(samples().image)]
        code = predict([*arguments, "--output", str(tmp_path / "out"), "--checkpoint", str(copy)])
        assert code == 2
        assert not (tmp_path / "out").exists()
    else:
        from unipercept.evaluate import main as evaluate

        (tmp_path / "gt.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]})
        )
        (tmp_path / "images").mkdir()
        gt, images, results = (str(tmp_path / name) for name in ("gt.json", "images", "r.json"))
        code = evaluate(
            ["det", "--gt", gt, "--images", images, "--results", results, "--model", str(copy)]
        )
        assert code == 2
    assert not marker.exists(), "the config ran code"


def test_the_config_is_read_as_plain_yaml_without_tags(folder, tmp_path):
    marker = tmp_path / "PWNED"
    copy = _copy(folder, tmp_path)
    text = (copy / CONFIG_FILE).read_text()
    (copy / CONFIG_FILE).write_text(
        text + f"evil: !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(PretrainedError, match="not a readable config"):
        from_pretrained(copy)
    assert not marker.exists()


def test_nothing_is_called_when_any_node_is_refused():
    calls = []
    allowed = [AllowedTarget("tests.modeling.test_pretrained_safety", "_record")]
    _record.calls = calls  # type: ignore[attr-defined]
    good = {"_target_": "tests.modeling.test_pretrained_safety._record", "value": 1}
    with pytest.raises(UntrustedConfigError, match=r"b\[1\]: _target_ 'os.getcwd'"):
        build_allowed({"a": good, "b": [good, {"_target_": "os.getcwd"}]}, allowed, source="x")
    assert calls == []
    assert build_allowed({"a": good, "b": [good]}, allowed, source="x") == {
        "a": ("built", 1),
        "b": [("built", 1)],
    }


def _record(value):
    _record.calls.append(value)  # type: ignore[attr-defined]
    return ("built", value)


def test_scrambled_weights_with_an_intact_header_are_refused(folder, tmp_path):
    copy = _copy(folder, tmp_path)
    weights = copy / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 100 : header + 4100] = os.urandom(4000)  # tensor bytes, header untouched
    weights.write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match="do not match the SHA-256"):
        from_pretrained(copy)


def test_a_folder_saved_before_checksums_loads_with_a_warning(folder, tmp_path, caplog):
    copy = _copy(folder, tmp_path)
    meta = json.loads((copy / META_FILE).read_text())
    del meta["weights_sha256"]
    meta["format_version"] = 1
    (copy / META_FILE).write_text(json.dumps(meta))
    with caplog.at_level("WARNING"):
        from_pretrained(copy)
    assert "not verified" in caplog.text
    meta["format_version"] = 2
    (copy / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(PretrainedError, match="no weights_sha256"):
        from_pretrained(copy)


def test_saving_into_a_folder_with_other_files_deletes_nothing(folder, tmp_path):
    model = from_pretrained(folder)
    target = tmp_path / "thesis"
    target.mkdir()
    (target / "thesis.tex").write_text("three years of work")
    with pytest.raises(FileExistsError, match="holds no earlier save"):
        save_pretrained(model, target)
    assert sorted(os.listdir(target)) == ["thesis.tex"]
    assert sorted(os.listdir(tmp_path)) == ["thesis"]  # no staging folder left behind


def test_saving_onto_a_file_path_refuses_and_keeps_the_file(folder, tmp_path):
    model = from_pretrained(folder)
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(FileExistsError, match="is a file"):
        save_pretrained(model, path)
    assert path.read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_saving_over_an_earlier_save_replaces_only_its_own_files(folder, tmp_path):
    model = from_pretrained(folder)
    target = save_pretrained(model, tmp_path / "model", description="first")
    (target / "README.md").write_text("model card")
    save_pretrained(model, target, description="second")
    assert (target / "README.md").read_text() == "model card"
    assert json.loads((target / META_FILE).read_text())["description"] == "second"
    assert sorted(os.listdir(target)) == sorted(["README.md", CONFIG_FILE, META_FILE, WEIGHTS_FILE])
    assert sorted(os.listdir(tmp_path)) == ["model"]
    from_pretrained(target)  # the checksum fits the new weights


def test_saving_into_an_empty_folder_works(folder, tmp_path):
    model = from_pretrained(folder)
    (tmp_path / "empty").mkdir()
    save_pretrained(model, tmp_path / "empty")
    from_pretrained(tmp_path / "empty")
