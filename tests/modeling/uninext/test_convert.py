"""``python -m unipercept.convert uninext``: the fixture's released-format checkpoint becomes a
model folder that loads and answers as UNINEXT did; bad files exit 2 with one line."""

from __future__ import annotations

import logging
import os
import pickle
import shutil

import pytest
import torch

from unipercept.convert.cli import main
from unipercept.modeling.pretrained import PretrainedError, load_model
from unipercept.modeling.uninext import Uninext
from unipercept.modeling.uninext.convert import load_uninext_checkpoint


def convert(*argv: str, caplog) -> tuple[int, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unipercept.convert"):
        code = main(list(argv))
    return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def det_logits(model, case):
    from unipercept.modeling.uninext.backbones import image_padding_mask

    images, sizes = case["input.images"], case["input.image_sizes"]
    with torch.no_grad():
        text = model.encode_text(case["input.input_ids"], case["input.attention_mask"])
        out = model(
            images,
            image_padding_mask(sizes, *images.shape[-2:]),
            [tuple(s) for s in sizes.tolist()],
            text,
            case["input.attention_mask"],
            pooled=False,
        )
    return out.logits


def test_converted_folder_loads_and_answers_as_uninext(uninext_dir, uninext_case, tmp_path, caplog):
    folder = tmp_path / "uninext-tiny"
    code, errors = convert(
        "uninext",
        str(uninext_dir / "checkpoint.pth"),
        str(folder),
        "--template-size",
        "64",
        "--video-size",
        "360",
        caplog=caplog,
    )
    assert code == 0 and not errors
    assert {p.name for p in folder.iterdir()} == {
        "config.yaml",
        "model.safetensors",
        "unipercept.json",
    }
    model = load_model(folder)
    assert isinstance(model, Uninext) and not model.training
    assert model.preprocess_settings == {"short_size": 800, "max_size": 1333, "video_size": 360}
    assert model.template.template_size == 64 and model.reid_head is not None
    case = uninext_case("det")
    torch.testing.assert_close(det_logits(model, case), case["out.pred_logits"], rtol=0, atol=2e-4)


def test_pth_converts_on_the_fly_with_uninexts_default_sizes(uninext_dir) -> None:
    model = load_model(uninext_dir / "checkpoint.pth")
    assert isinstance(model, Uninext)
    assert model.preprocess_settings == {"short_size": 800, "max_size": 1333, "video_size": 480}
    assert model.template.template_size == 256


@pytest.fixture(scope="module")
def state(uninext_dir):
    return torch.load(uninext_dir / "checkpoint.pth", weights_only=True)["model"]


def write(tmp_path, name, content) -> str:
    path = tmp_path / name
    torch.save(content, path)
    return str(path)


def one_line_error(caplog, *argv) -> str:
    code, errors = convert(*argv, caplog=caplog)
    assert code == 2 and len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def test_damaged_and_foreign_files_exit_2_naming_file_and_key(uninext_dir, state, tmp_path, caplog):
    out = str(tmp_path / "out")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((uninext_dir / "checkpoint.pth").read_bytes()[:1_000_000])
    assert str(truncated) in one_line_error(caplog, "uninext", str(truncated), out)
    assert "truncated" in one_line_error(caplog, "uninext", str(truncated), out)

    foreign = write(tmp_path, "foreign.pth", {"state_dict": {"conv.weight": torch.zeros(2)}})
    assert "not a UNINEXT checkpoint" in one_line_error(caplog, "uninext", foreign, out)

    missing = dict(state)
    del missing["detr.detr.transformer.decoder.layers.1.norm2.weight"]
    message = one_line_error(caplog, "uninext", write(tmp_path, "m.pth", {"model": missing}), out)
    assert "missing key detr.detr.transformer.decoder.layers.1.norm2.weight" in message

    unexpected = dict(state)
    unexpected["detr.detr.extra_head.weight"] = torch.zeros(3)
    message = one_line_error(
        caplog, "uninext", write(tmp_path, "u.pth", {"model": unexpected}), out
    )
    assert "unexpected key detr.detr.extra_head.weight" in message

    shaped = dict(state)
    shaped["detr.detr.iou_head.1.weight"] = torch.zeros(2, 256)
    message = one_line_error(caplog, "uninext", write(tmp_path, "s.pth", {"model": shaped}), out)
    assert "detr.detr.iou_head.1.weight has shape (2, 256)" in message

    assert not (tmp_path / "out").exists()
    assert "no such file" in one_line_error(caplog, "uninext", str(tmp_path / "nope.pth"), out)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_not_run(tmp_path, caplog) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as file:
        pickle.dump({"model": _Payload(str(marker))}, file)
    message = one_line_error(caplog, "uninext", str(path), str(tmp_path / "out"))
    assert "refused" in message or "not a readable checkpoint" in message
    assert not marker.exists()
    with pytest.raises(PretrainedError):
        load_uninext_checkpoint(path)
    assert not marker.exists()


def test_refuses_a_folder_of_other_files_before_loading(uninext_dir, tmp_path, caplog) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    message = one_line_error(caplog, "uninext", str(uninext_dir / "checkpoint.pth"), str(folder))
    assert "not empty" in message and (folder / "notes.txt").read_text() == "keep"


def test_bad_sizes_are_usage_errors(uninext_dir, tmp_path, caplog) -> None:
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
    message = one_line_error(
        caplog,
        "uninext",
        str(uninext_dir / "checkpoint.pth"),
        str(tmp_path / "o"),
        "--image-size",
        "0",
    )
    assert "image_size must be a positive integer" in message


def test_image_stage_checkpoint_has_no_video_heads(state, tmp_path) -> None:
    """Stage 1-2 releases (UNINEXT_IMG) lack the template encoder and the re-id head."""
    video_only = (
        "detr.detr.ref_backbone.",
        "detr.reid_embed_head.",
        "detr.sot_fuser.",
        "detr.adjust_layer.",
    )
    image_stage = {k: v for k, v in state.items() if not k.startswith(video_only)}
    model = load_uninext_checkpoint(write(tmp_path, "image.pth", {"model": image_stage}))
    assert model.template is None and model.reid_head is None
    with pytest.raises(ValueError, match="no template encoder"):
        model.encode_template(torch.zeros(3, 64, 64), torch.tensor([1.0, 1, 20, 20]))


def test_evaluate_runs_a_converted_folder_at_its_sizes(uninext_dir, tmp_path, caplog) -> None:
    from unipercept.evaluate.predictor import build_predictor
    from unipercept.modeling.uninext.preprocess import UninextPreprocessor

    folder = tmp_path / "m"
    code, _ = convert(
        "uninext",
        str(uninext_dir / "checkpoint.pth"),
        str(folder),
        "--template-size",
        "64",
        "--image-size",
        "320",
        "--video-size",
        "240",
        caplog=caplog,
    )
    assert code == 0
    predictor = build_predictor(str(folder), None, None, None)
    assert isinstance(predictor.model, Uninext)
    assert isinstance(predictor.preprocess, UninextPreprocessor)
    assert (predictor.preprocess.short_size, predictor.video_preprocess.short_size) == (320, 240)
    assert build_predictor(str(folder), None, 200, None).preprocess.short_size == 200


def test_evaluate_takes_a_uninext_pth_as_predict_does(uninext_dir) -> None:
    from unipercept.evaluate.predictor import build_predictor

    predictor = build_predictor(str(uninext_dir / "checkpoint.pth"), None, 96, None)
    assert isinstance(predictor.model, Uninext) and predictor.preprocess.short_size == 96
