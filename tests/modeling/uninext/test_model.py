"""The whole UNINEXT model, built from the fixture checkpoint's shapes and loaded with its
weights, against UNINEXT's recorded stages and outputs."""

from __future__ import annotations

import pytest
import torch

from unipercept.modeling.uninext.backbones import image_padding_mask
from unipercept.modeling.uninext.build import architecture_from_shapes, build_uninext
from unipercept.modeling.uninext.checkpoint import to_our_names


def close(ours, ref, atol: float) -> None:
    torch.testing.assert_close(ours, ref, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def model(uninext_weights):
    shapes = {k: tuple(v.shape) for k, v in uninext_weights.items()}
    built = build_uninext(**architecture_from_shapes(shapes, template_size=64))
    built.load_state_dict(to_our_names(uninext_weights), strict=True)
    return built.eval()


def run(model, images, sizes, text, mask, *, pooled):
    padding = image_padding_mask(sizes, images.shape[-2], images.shape[-1])
    with torch.no_grad():
        return model(images, padding, [tuple(s) for s in sizes.tolist()], text, mask, pooled=pooled)


@pytest.mark.parametrize("name", ["det", "grounding"])
def test_image_case_every_stage(model, uninext_case, name: str) -> None:
    case = uninext_case(name)
    with torch.no_grad():
        text = model.encode_text(case["input.input_ids"], case["input.attention_mask"])
    close(text, case["text.hidden"], 2e-5)
    out = run(
        model,
        case["input.images"],
        case["input.image_sizes"],
        text,
        case["input.attention_mask"],
        pooled=name == "grounding",
    )
    t = out.transformer
    if name == "det":
        close(t.memory, case["rec.encoder.memory"], 1e-4)
        close(t.proposals, case["rec.enc.output_proposals"], 1e-5)
    close(t.text, case["rec.fusion.lang_hidden_out"], 1e-5)
    close(t.enc_logits, case["rec.enc.outputs_class"], 2e-3)
    assert torch.equal(t.topk, case["rec.enc.topk_indices"])
    close(t.init_reference, case["rec.decoder.init_reference"], 1e-5)
    close(t.hidden, case["rec.decoder.hs"], 1e-4)
    close(t.references, case["rec.decoder.inter_references"], 1e-5)
    close(out.logits, case["out.pred_logits"], 2e-4)
    close(out.iou_logits, case["out.pred_iou_logits"], 5e-5)
    close(out.boxes, case["out.pred_boxes_cxcywh"], 1e-5)
    close(out.reference_points, case["out.reference_points_xy"], 1e-5)
    close(out.mask_logits, case["out.pred_mask_logits"], 5e-3)
    close(out.embeddings, case["out.pred_inst_embed"], 5e-5)
