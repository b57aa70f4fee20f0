"""The library API: batches that answer as one image at a time, reduced precision, and a model
layer that does not reach up into the API."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from unipercept.api import Predictor, as_image
from unipercept.data.preprocess import ImagePreprocessor
from unipercept.modeling.pretrained import bundled_models
from unipercept.structures.boxes import box_iou

from .modeling.tiny import tiny_unipercept

bundled = pytest.mark.skipif(
    "unipercept-tiny" not in bundled_models(), reason="the bundled model is not built"
)


@pytest.fixture(scope="module")
def sample():
    from unipercept.assets import samples

    return samples()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_pretrained("unipercept-tiny")


def _views(image: torch.Tensor) -> list[torch.Tensor]:
    """Four images of the sample: three that resize onto one canvas (the sample, its mirror
    and a crop of another shape) and a narrower one that does not."""
    return [
        image,
        torch.flip(image, dims=[2]).contiguous(),
        image[:, 10:150, 20:200].contiguous(),
        image[:, :, :300].contiguous(),
    ]


def _assert_same(one, many) -> None:
    assert len(one) == len(many)
    for a, b in zip(one, many, strict=True):
        assert len(a) == len(b)
        torch.testing.assert_close(a.boxes, b.boxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=0)
        assert torch.equal(a.labels, b.labels)
        if a.masks is not None:
            assert (a.masks != b.masks).sum() <= 2  # a pixel on a mask's edge may flip


@bundled
def test_a_batch_answers_each_image_as_predict_does(predictor, sample):
    images = _views(as_image(sample.image))
    assert len({predictor._canvas(i) for i in images}) == 2  # a mix of canvases
    one = [predictor.predict(i, sample.categories, "insseg") for i in images]
    assert all(len(found) for found in one)
    many = predictor.predict_batch(images, sample.categories, "insseg", batch_size=2)
    _assert_same(one, many)


@bundled
def test_a_batch_takes_paths_and_an_encoded_prompt(predictor, sample):
    embedding = predictor.encode(sample.expression, "rec")
    many = predictor.predict_batch([sample.image, str(sample.image)], embedding, "rec")
    alone = predictor.predict(sample.image, sample.expression, "rec")
    _assert_same([alone, alone], many)


def test_images_on_one_canvas_share_a_forward_pass(monkeypatch):
    predictor = Predictor(tiny_unipercept(), preprocess=ImagePreprocessor(short_size=64))
    sizes = []
    forward = predictor._forward

    def counting(images, prompt, task):
        sizes.append(len(images))
        return forward(images, prompt, task)

    monkeypatch.setattr(predictor, "_forward", counting)
    same = [torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8) for _ in range(5)]
    other = torch.randint(0, 255, (3, 64, 48), dtype=torch.uint8)
    found = predictor.predict_batch([*same[:2], other, *same[2:]], "cat. dog", batch_size=3)
    assert len(found) == 6 and found[2].image_size == (64, 48)
    assert sorted(sizes) == [1, 2, 3]  # five alike in batches of 3 + 2, the other alone


@pytest.mark.parametrize(
    ("images", "options", "message"),
    [
        ("a.png", {}, "list of images"),
        ([], {"batch_size": 0}, "batch_size must be at least 1"),
        ([], {"task": "mot"}, "video task"),
    ],
)
def test_bad_batches_are_refused_naming_what_was_given(images, options, message):
    predictor = Predictor(tiny_unipercept(), preprocess=ImagePreprocessor(short_size=64))
    with pytest.raises(ValueError, match=message):
        predictor.predict_batch(images, "cat", **options)


def test_an_unknown_dtype_is_refused_before_any_weights_load():
    with pytest.raises(ValueError, match="dtype must be one of .* got 'int8'"):
        Predictor.from_pretrained("no-such-model", dtype="int8")


@bundled
def test_bfloat16_answers_like_float32_and_reports_float32(predictor, sample):
    reduced = Predictor(predictor.model, dtype="bf16")
    assert reduced.dtype == torch.bfloat16
    full = predictor.predict(sample.image, sample.categories, "insseg")
    half = reduced.predict(sample.image, sample.categories, "insseg")
    assert half.boxes.dtype == half.scores.dtype == torch.float32
    assert next(predictor.model.parameters()).dtype == torch.float32  # weights untouched
    sure = full.scores > 0.4
    for box, label in zip(full.boxes[sure], full.labels[sure], strict=True):
        same = half.labels == label
        assert same.any() and box_iou(box[None], half.boxes[same]).max() > 0.85
    torch.testing.assert_close(half.scores[:3], full.scores[:3], atol=0.05, rtol=0)


@bundled
def test_a_bfloat16_session_tracks_in_reduced_precision(predictor, sample):
    from unipercept.data.video import open_frames

    reduced = Predictor(predictor.model, dtype=torch.bfloat16)
    with open_frames(sample.video) as source:
        frames = [frame for _, frame in source][:3]
    with reduced.start("mot", sample.categories) as session:
        assert session.dtype == torch.bfloat16
        tracked = [session.step(frame) for frame in frames]
    assert all(t.boxes.dtype == torch.float32 for t in tracked)
    assert sum(len(t) for t in tracked) > 0


def test_the_model_layer_does_not_import_the_api_or_tasks():
    """Arrows point down: loading the models leaves the API and the tasks unloaded."""
    code = (
        "import sys; import unipercept.modeling.unipercept, unipercept.modeling.uninext.model; "
        "print(sorted(m for m in sys.modules if m.startswith(('unipercept.api', "
        "'unipercept.tasks', 'unipercept.predict'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
