"""UNINEXT's video sessions on the paths the fixture does not record: the SOT template update,
several VOS objects, and a backbone that pads frames to multiples of 32."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from tests.modeling.uninext.conftest import (  # noqa: F401 (pytest fixtures)
    uninext_case,
    uninext_dir,
    uninext_model,
    uninext_weights,
)
from tests.tasks.test_uninext_tasks import original_frame, video_predictor  # noqa: F401
from unipercept.api import Predictor
from unipercept.modeling.uninext import build_uninext
from unipercept.structures import AnnotationPrompt


@pytest.mark.parametrize(("interval", "replaced"), [(1, True), (2, False)])
def test_sot_replaces_its_latest_template_on_update_frames(
    video_predictor,  # noqa: F811
    uninext_case,  # noqa: F811
    interval: int,
    replaced: bool,
) -> None:
    """Frame 1 is an update frame for an interval of 1 and not for 2; the first template is
    never replaced."""
    case = uninext_case("sot")
    frames = [original_frame(case[f"input.frame{i}_image"]) for i in range(2)]
    prompt = AnnotationPrompt(frames[0], box=case["input.box_orig_xyxy"])
    options = {"update_interval": interval, "update_threshold": 0.0}
    with video_predictor.start("sot", prompt, **options) as session:
        first = session.first
        for frame in frames:
            session.step(frame)
        assert session.first is first
        assert (session.latest is not first) == replaced


def test_vos_objects_are_searched_independently_and_merged(video_predictor, uninext_case):  # noqa: F811
    """Two objects: each is searched with its own templates (object 1's box and score equal a
    run with object 1 alone), and the label map holds at most their two labels."""
    case = uninext_case("vos")
    frames = [original_frame(case[f"input.frame{i}_image"]) for i in range(2)]
    first = AnnotationPrompt(frames[0], mask=case["input.prompt_mask_orig"].bool())
    other = torch.zeros(frames[0].shape[1:], dtype=torch.bool)
    other[20:70, 150:230] = True
    second = AnnotationPrompt(frames[0], mask=other)
    with video_predictor.start("vos", [first]) as alone:
        single = [alone.step(frame) for frame in frames][1]
    with video_predictor.start("vos", [first, second]) as both:
        annotated = both.step(frames[0])
        double = both.step(frames[1])
        assert len(both.first) == 2 and both.first[0][0] is not both.first[1][0]
    assert annotated.track_ids.tolist() == [1, 2]
    assert set(double.track_ids.tolist()) <= {1, 2}
    one = double.track_ids.tolist().index(1)
    assert_close(double.scores[one], single.scores[0], rtol=0, atol=1e-5)
    assert_close(double.boxes[one], single.boxes[0], rtol=0, atol=1e-3)
    masks = double.masks.long()
    assert int(masks.sum(0).max()) <= 1  # the label map's regions do not overlap


@pytest.fixture(scope="module")
def padded_model():
    """A tiny ConvNeXt UNINEXT (random weights): its backbone pads frames to multiples of 32."""
    torch.manual_seed(0)
    convnext = {"kind": "convnext", "depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}
    text = {
        "vocab_size": 30522,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    }
    model = build_uninext(
        backbone={**convnext, "in_channels": 3},
        template_backbone={**convnext, "in_channels": 4},
        text=text,
        encoder_layers=1,
        decoder_layers=2,
        ffn_dim=32,
        encoder_points=1,
        decoder_points=1,
        num_queries=20,
        fusion_dim=64,
        reid_layers=1,
        reid_points=1,
        template_size=64,
    )
    model.preprocess_settings = {"short_size": 90, "max_size": 200, "video_size": 70}
    return model


def test_a_backbone_that_pads_runs_every_task(padded_model) -> None:
    """Frames whose resized sizes are not multiples of 32 (90x120 and 70x93) are padded, and
    image and video answers come back at the frame's own size."""
    assert padded_model.size_divisibility == 32
    generator = torch.Generator().manual_seed(0)
    frame = torch.randint(0, 256, (3, 75, 100), dtype=torch.uint8, generator=generator)
    predictor = Predictor(padded_model)
    found = predictor.predict(frame, "cat. dog", task="insseg", score_threshold=0.0)
    assert found.image_size == (75, 100) and found.masks.shape[1:] == (75, 100)
    found = predictor.predict(frame, "the cat on the left", task="res")
    assert found.image_size == (75, 100) and found.masks.shape == (1, 75, 100)
    with pytest.raises(ValueError, match="task 'res' takes no options; not score_threshold"):
        predictor.predict(frame, "the cat on the left", task="res", score_threshold=0.5)
    mask = torch.zeros(75, 100, dtype=torch.bool)
    mask[10:40, 20:60] = True
    prompts = {
        "sot": AnnotationPrompt(frame, box=[20.0, 10.0, 60.0, 40.0]),
        "vos": [AnnotationPrompt(frame, mask=mask)],
        "vis": "cat. dog",
        "mots": "cat. dog",
        "rvos": "the cat on the left",
    }
    for task, prompt in prompts.items():
        with predictor.start(task, prompt) as session:
            results = [session.step(frame) for _ in range(3)]
        assert all(r.image_size == (75, 100) for r in results), task
        if task != "sot":
            assert all(r.masks is None or r.masks.shape[1:] == (75, 100) for r in results), task
