"""A tiny UniPercept exported for one task and prompt answers in onnxruntime and as a
``torch.export`` program what it answers in PyTorch: raw per-query outputs within 1e-4, and
after the Python post-processing the same results as ``Predictor.predict``; video tasks and bad
arguments are refused before anything is traced or written."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from tests.modeling.tiny import tiny_backbone, tiny_text_encoder
from unipercept.api import Predictor
from unipercept.data.synthetic.scenes import render_image
from unipercept.export.graph import MASK_OUTPUT, NOT_EXPORTABLE, ExportMetadata
from unipercept.export.onnx import export_onnx, export_program, program_metadata
from unipercept.export.runtime import graph_output, letterbox, postprocess
from unipercept.modeling import build_unipercept
from unipercept.ops.ms_deform_attn import FORCE_PYTORCH_ENV
from unipercept.structures import CategoryPrompt, ExpressionPrompt
from unipercept.tasks import DetectionTask
from unipercept.tasks.base import combined_scores

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None,
    reason="onnxruntime is not installed (pip install onnxruntime; unipercept[dev] has it)",
)
needs_onnxscript = pytest.mark.skipif(
    importlib.util.find_spec("onnxscript") is None,
    reason="onnxscript is not installed; torch.onnx.export(dynamo=True) needs it "
    "(pip install onnxscript; unipercept[dev] has it)",
)

CATEGORIES = "circle. square. triangle"
EXPRESSION = "the small red circle left of the square"
# The canvas is the padded size the model's preprocessor (64 / 96) gives an 80 x 100 image
# (resized to 64 x 80, padded to 64 x 96): letterbox then builds exactly predict's batch.
HEIGHT, WIDTH = 64, 96
ATOL = 1e-4
# Enough answers to compare even from random weights.
ANSWERS = {"score_threshold": 0.0, "top_k": 5}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_unipercept(
        backbone=tiny_backbone(),
        text_encoder=tiny_text_encoder(),
        hidden_dim=32,
        num_levels=3,
        num_queries=10,
        encoder_layers=1,
        decoder_layers=2,
        ffn_dim=64,
        num_heads=2,
        num_points=2,
        dropout=0.0,
        mask_channels=32,
        embedding_dim=16,
        referring_rescorer=True,
    )
    with torch.no_grad():  # as if fitted: expression graphs must carry the re-scorer
        model.rescorer.output.weight.normal_(generator=torch.Generator().manual_seed(1))
    model.preprocess_settings = {"short_size": 64, "max_size": 96}
    return model.eval()


@pytest.fixture(scope="module")
def scenes() -> list[np.ndarray]:
    """Rendered shapes images: one that pads to the canvas as predict pads it, one of
    another aspect ratio (a different valid region in the same canvas)."""
    rng = np.random.default_rng(0)
    return [
        render_image(rng, 80, 100, crowd=False).image,
        render_image(rng, 90, 90, crowd=False).image,
    ]


@pytest.fixture(scope="module")
def det_onnx(model, tmp_path_factory):
    """det exported with the model in training mode (the export must not change it)."""
    model.train()
    path = export_onnx(
        model,
        tmp_path_factory.mktemp("det") / "det.onnx",
        task="det",
        prompt=CATEGORIES,
        height=HEIGHT,
        width=WIDTH,
    )
    mode_after = model.training
    model.eval()
    return path, mode_after


def _session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path, batch) -> dict[str, torch.Tensor]:
    session = _session(path)
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {"image": batch.tensor.numpy(), "valid": batch.valid.numpy()})
    return {name: torch.from_numpy(value) for name, value in zip(names, values, strict=True)}


def _reference(model, batch, prompt, with_masks: bool) -> dict[str, torch.Tensor]:
    """The normal PyTorch path (compiled deformable attention where it is built)."""
    with torch.no_grad():
        output = model(batch, [prompt])
        reference = {
            "logits": output.logits[-1],
            "quality": output.quality[-1],
            "scores": combined_scores(output, 0.5),
            "boxes": output.boxes[-1],
            "embeddings": output.embeddings,
        }
        if with_masks:
            queries = torch.arange(output.logits.shape[2])
            masks = output.mask_logits(-1, torch.zeros_like(queries), queries)
            reference[MASK_OUTPUT] = masks[None]
    return reference


def _assert_same_answers(got, expected, *, masks: bool) -> None:
    assert len(got) == len(expected) > 0
    assert got.image_size == expected.image_size
    torch.testing.assert_close(got.labels, expected.labels)
    torch.testing.assert_close(got.scores, expected.scores, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.boxes, expected.boxes, atol=1e-3, rtol=0)  # pixels
    if masks:
        assert got.masks.shape == expected.masks.shape
        disagree = (got.masks != expected.masks).float().mean().item()
        assert disagree < 1e-3, f"{disagree:.2%} of mask pixels differ"


@needs_onnxscript
@needs_onnxruntime
def test_det_graph_inputs_outputs_and_metadata(det_onnx, model):
    path, _ = det_onnx
    session = _session(path)
    inputs = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    assert inputs == {
        "image": ([1, 3, HEIGHT, WIDTH], "tensor(float)"),
        "valid": ([1, HEIGHT, WIDTH], "tensor(bool)"),
    }
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert outputs == {
        "logits": [1, 10, 3],
        "quality": [1, 10],
        "scores": [1, 10, 3],
        "boxes": [1, 10, 4],
        "embeddings": [1, 10, 16],
    }
    metadata = ExportMetadata.from_strings(session.get_modelmeta().custom_metadata_map)
    assert metadata.task == "det" and metadata.prompt == CATEGORIES
    assert metadata.labels == ("circle", "square", "triangle")
    assert (metadata.height, metadata.width, metadata.mask_stride) == (HEIGHT, WIDTH, None)
    assert metadata.pixel_mean == (0.485, 0.456, 0.406)
    assert metadata.outputs == tuple(outputs)


@needs_onnxscript
@needs_onnxruntime
@pytest.mark.parametrize("scene", [0, 1], ids=["predict-canvas", "other-aspect"])
def test_det_onnx_matches_pytorch(det_onnx, model, scenes, scene):
    path, _ = det_onnx
    batch = letterbox(
        scenes[scene],
        ExportMetadata.from_strings(_session(path).get_modelmeta().custom_metadata_map),
    )
    assert not bool(batch.valid.all())  # the padding is an input, not baked into the graph
    got = _run(path, batch)
    expected = _reference(model, batch, CategoryPrompt.parse(CATEGORIES), with_masks=False)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=ATOL, rtol=0, msg=name)


@needs_onnxscript
@needs_onnxruntime
def test_det_onnx_answers_like_predict(det_onnx, model, scenes):
    from unipercept.export.runtime import OnnxPredictor

    path, _ = det_onnx
    predictor = OnnxPredictor(path)
    # The canvas is the preprocessor's padded size for this image: the same batch.
    batch = letterbox(scenes[0], predictor.metadata)
    expected_batch = model.default_preprocess()([torch.from_numpy(scenes[0]).permute(2, 0, 1)])
    assert batch.image_sizes == expected_batch.image_sizes
    torch.testing.assert_close(batch.tensor, expected_batch.tensor)
    got = predictor.predict(scenes[0], **ANSWERS)
    expected = Predictor(model).predict(scenes[0], CATEGORIES, "det", **ANSWERS)
    _assert_same_answers(got, expected, masks=False)
    # What a tracker takes (mot): the detections with their association embeddings.
    detector = DetectionTask(**ANSWERS)
    output = graph_output(predictor.run(batch), batch, predictor.metadata)
    with torch.no_grad():
        reference = model(batch, [CategoryPrompt.parse(CATEGORIES)])
    tracked = detector.detections(output, batch, 0, with_embeddings=True)
    expected = detector.detections(reference, batch, 0, with_embeddings=True)
    _assert_same_answers(tracked, expected, masks=False)
    torch.testing.assert_close(tracked.embeddings, expected.embeddings, atol=ATOL, rtol=0)


@needs_onnxscript
@needs_onnxruntime
def test_compare_reports_the_agreement(det_onnx, model, scenes):
    from unipercept.export.compare import compare

    path, _ = det_onnx
    lines = compare(path, model, torch.from_numpy(scenes[0]).permute(2, 0, 1))
    assert "the batch Predictor.predict builds" in lines[0]
    differences = {line.split()[0]: float(line.split()[-1]) for line in lines[2:7]}
    assert differences.keys() == {"logits", "quality", "scores", "boxes", "embeddings"}
    assert max(differences.values()) < ATOL
    count = len(Predictor(model).predict(scenes[0], CATEGORIES, "det"))
    assert lines[7] == f"answers: {count} from the graph, {count} from Predictor.predict"


@needs_onnxscript
def test_export_restores_the_model_and_the_attention_switch(det_onnx):
    _, mode_after = det_onnx
    assert mode_after is True
    assert os.environ.get(FORCE_PYTORCH_ENV) != "1"


def test_program_gives_the_same_outputs(model, scenes, tmp_path):
    """res as a torch.export program: the mask path and an expression prompt (no ONNX, so
    cheap enough for every run; the slow tests put res through onnxruntime)."""
    path = export_program(
        model, tmp_path / "res.pt2", task="res", prompt=EXPRESSION, height=HEIGHT, width=WIDTH
    )
    metadata = program_metadata(path)
    assert (metadata.task, metadata.labels, metadata.mask_stride) == ("res", (EXPRESSION,), 8)
    assert metadata.outputs[-1] == MASK_OUTPUT
    program = torch.export.load(path)
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("unipercept" in target for target in targets)  # the compiled op is out
    assert any("grid_sampler" in target for target in targets)  # its PyTorch reference
    for scene in scenes:
        batch = letterbox(scene, metadata)
        with torch.no_grad():
            outputs = program.module()(batch.tensor, batch.valid)
        got = dict(zip(metadata.outputs, outputs, strict=True))
        assert got[MASK_OUTPUT].shape == (1, 10, HEIGHT // 8, WIDTH // 8)
        expected = _reference(model, batch, ExpressionPrompt(EXPRESSION), with_masks=True)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, atol=ATOL, rtol=0, msg=name)
    batch = letterbox(scenes[0], metadata)  # predict's batch (see test_det_onnx_answers...)
    with torch.no_grad():
        outputs = program.module()(batch.tensor, batch.valid)
    (got,) = postprocess(dict(zip(metadata.outputs, outputs, strict=True)), batch, metadata)
    expected = Predictor(model).predict(scenes[0], EXPRESSION, "res")
    assert len(got) == 1
    _assert_same_answers(got, expected, masks=True)


@pytest.mark.slow
@needs_onnxscript
@needs_onnxruntime
@pytest.mark.parametrize("task", ["insseg", "rec", "res"])
def test_other_image_tasks_through_onnxruntime(task, model, scenes, tmp_path):
    from unipercept.export.runtime import OnnxPredictor

    prompt = CATEGORIES if task == "insseg" else EXPRESSION
    path = export_onnx(
        model, tmp_path / f"{task}.onnx", task=task, prompt=prompt, height=HEIGHT, width=WIDTH
    )
    predictor = OnnxPredictor(path)
    with_masks = task in ("insseg", "res")
    parsed = CategoryPrompt.parse(prompt) if task == "insseg" else ExpressionPrompt(prompt)
    for scene in scenes:
        batch = letterbox(scene, predictor.metadata)
        got = {name: torch.from_numpy(value) for name, value in predictor.run(batch).items()}
        expected = _reference(model, batch, parsed, with_masks=with_masks)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, atol=ATOL, rtol=0, msg=name)
    options = ANSWERS if task == "insseg" else {}
    got = predictor.predict(scenes[0], **options)
    expected = Predictor(model).predict(scenes[0], prompt, task, **options)
    _assert_same_answers(got, expected, masks=with_masks)


@pytest.mark.parametrize("task", sorted(NOT_EXPORTABLE))
def test_video_tasks_are_refused_with_the_reason(task, model, tmp_path):
    reason = {"sot": "template", "vos": "template", "mot": "tracker", "mots": "tracker"}
    reason |= {"vis": "whole video", "rvos": "whole-video vote"}
    for export, name in ((export_onnx, "video.onnx"), (export_program, "video.pt2")):
        with pytest.raises(ValueError, match=f"task '{task}' cannot be exported") as error:
            export(model, tmp_path / name, task=task, prompt="person", height=64, width=64)
        assert reason[task] in str(error.value)
        assert "per-frame detector" in str(error.value)
    assert not any(tmp_path.iterdir())  # nothing written, no staging folder left


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"task": "seg"}, "unknown task 'seg'; the exportable tasks are"),
        ({"height": 100}, "height must be a multiple of 32 .* got 100: use 96 or 128"),
        ({"width": 0}, "width must be a positive integer"),
        ({"prompt": "  "}, "prompt must be a non-empty string"),
        ({"prompt": ". ,"}, "CategoryPrompt.names is empty"),
        ({"opset": 11}, "opset must be at least 18"),
    ],
)
def test_bad_arguments_are_refused(model, tmp_path, arguments, message):
    options = {"task": "det", "prompt": "cat", "height": 64, "width": 64, **arguments}
    with pytest.raises(ValueError, match=message):
        export_onnx(model, tmp_path / "out.onnx", **options)
    assert not any(tmp_path.iterdir())


def test_destinations_it_did_not_write_are_left_alone(model, tmp_path):
    options = {"task": "det", "prompt": "cat", "height": 64, "width": 64}
    foreign = tmp_path / "notes.onnx"
    foreign.write_text("mine")
    with pytest.raises(FileExistsError, match="not an earlier unipercept export"):
        export_onnx(model, foreign, **options)
    assert foreign.read_text() == "mine"
    (tmp_path / "folder.pt2").mkdir()
    with pytest.raises(FileExistsError, match="is a folder"):
        export_program(model, tmp_path / "folder.pt2", **options)
    with pytest.raises(ValueError, match=r"must end in \.onnx"):
        export_onnx(model, tmp_path / "model.pt2", **options)
    with pytest.raises(ValueError, match="only UniPercept models"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "linear.onnx", **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.pt2", "notes.onnx"]


def test_metadata_of_a_foreign_graph_is_refused():
    with pytest.raises(ValueError, match="not written by unipercept.export.onnx"):
        ExportMetadata.from_strings({"producer": "someone"})
