"""Inputs that used to give silently wrong answers: 16-bit and TIFF images, float images in
0..255, frames of another size mid-video, empty images, and thresholds out of range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unipercept.api import Predictor, as_image
from unipercept.data.datasets.base import DatasetError
from unipercept.data.io import load_image
from unipercept.data.preprocess import ImagePreprocessor
from unipercept.data.video import image_files
from unipercept.structures import CategoryPrompt
from unipercept.tasks import TASKS

from .modeling.tiny import tiny_unipercept


def _picture() -> np.ndarray:
    """(48, 64, 3) uint8: a gradient with a bright square, all grey (R = G = B)."""
    grey = np.tile(np.linspace(10, 120, 64), (48, 1))
    grey[10:30, 20:40] = 230
    return np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)


def test_a_16_bit_png_reads_as_the_same_picture_in_8_bits(tmp_path):
    picture = _picture()
    wide = picture[..., 0].astype(np.uint16) * 257  # the same picture in 16 bits
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode == "I;16"
    loaded = load_image(tmp_path / "wide.png")
    assert loaded.dtype == torch.uint8 and loaded.shape == (3, 48, 64)
    assert torch.equal(loaded, torch.from_numpy(picture).permute(2, 0, 1))


@pytest.mark.parametrize("mode", ["I", "F"])
def test_32_bit_images_of_unknown_range_are_refused_naming_the_file(tmp_path, mode):
    values = _picture()[..., 0].astype(np.int32 if mode == "I" else np.float32)
    Image.fromarray(values).save(tmp_path / "deep.tif")
    with pytest.raises(DatasetError, match=r"deep\.tif.*32-bit"):
        load_image(tmp_path / "deep.tif")


def test_tiff_images_are_listed_and_read(tmp_path):
    Image.fromarray(_picture()).save(tmp_path / "a.tif")
    Image.fromarray(_picture()).save(tmp_path / "b.tiff")
    assert [p.name for p in image_files(tmp_path)] == ["a.tif", "b.tiff"]
    assert np.array_equal(load_image(tmp_path / "a.tif").permute(1, 2, 0).numpy(), _picture())


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(tiny_unipercept(), preprocess=ImagePreprocessor(short_size=64, max_size=96))


def test_float_images_are_0_to_1_and_0_to_255_floats_are_refused(predictor):
    image = torch.from_numpy(_picture()).permute(2, 0, 1)
    as_uint8 = predictor.predict(image, "square", task="det", score_threshold=0.0)
    as_float = predictor.predict(image.float() / 255, "square", task="det", score_threshold=0.0)
    assert torch.allclose(as_uint8.scores, as_float.scores, atol=1e-5)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
        predictor.predict(image.float(), "square", task="det")
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
        predictor.predict(torch.full((3, 8, 8), float("nan")), "square", task="det")
    with pytest.raises(ValueError, match="dtype torch.int16"):
        predictor.predict(image.to(torch.int16), "square", task="det")
    assert as_image(image.float() / 255).is_floating_point()  # passed on, checked once


def test_an_empty_image_is_refused_with_its_shape(predictor):
    with pytest.raises(ValueError, match=r"empty: \(3, 0, 0\)"):
        predictor.predict(torch.zeros(3, 0, 0, dtype=torch.uint8), "square", task="det")


@pytest.mark.parametrize("task", ["mot", "sot"])
def test_a_frame_of_another_size_mid_video_is_refused_naming_it(predictor, task):
    frame = torch.from_numpy(_picture()).permute(2, 0, 1).contiguous()
    if task == "sot":
        from unipercept.structures import AnnotationPrompt

        prompt = [AnnotationPrompt(frame, box=[20, 10, 40, 30])]
    else:
        prompt = CategoryPrompt.parse("square")
    with predictor.start(task, prompt) as session:
        session.step(frame)
        session.step(frame)
        with pytest.raises(ValueError, match="frame 2 is 32x48, the video's frames are 64x48"):
            session.step(frame[:, :, :32])
        assert len(session.step(frame).boxes) <= 100  # the session goes on with right frames


@pytest.mark.parametrize("value", [float("nan"), 5, -0.1, "high", True, None])
@pytest.mark.parametrize("task", ["det", "insseg", "sot", "vos", "mot", "mots", "vis"])
def test_score_thresholds_outside_0_1_are_refused_naming_the_option(task, value):
    with pytest.raises(ValueError, match=r"score_threshold must be in \[0, 1\]"):
        TASKS[task](score_threshold=value)


def test_score_thresholds_at_the_bounds_are_taken():
    assert TASKS["det"](score_threshold=0).score_threshold == 0.0
    assert TASKS["sot"](score_threshold=1).score_threshold == 1.0
