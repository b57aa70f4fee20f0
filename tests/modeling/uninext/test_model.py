"""The whole UNINEXT model, built from the fixture checkpoint's shapes and loaded with its
weights, against UNINEXT's recorded stages and outputs; on both deformable-attention back-ends
(the compiled op and the PyTorch reference)."""

from __future__ import annotations

import importlib
from collections import Counter

import pytest
import torch

from unipercept.modeling.uninext.backbones import image_padding_mask

# The module, not the function that ``unipercept.ops`` re-exports under the same name.
MSDA = importlib.import_module("unipercept.ops.ms_deform_attn")

#: Deformable-attention back-ends the end-to-end tests run on (tensors stay on the CPU).
BACKENDS = ["pytorch", "cpu"]


def close(ours, ref, atol: float) -> None:
    torch.testing.assert_close(ours, ref, rtol=0, atol=atol)


def use_attention_backend(backend: str, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Makes every deformable attention of the test run on ``backend`` and counts the calls
    that reach each implementation: ``"pytorch"`` for the reference, the tensors' device type
    for the compiled op. Skips ``"cpu"`` where the compiled op is not loaded."""
    if backend == "pytorch":
        monkeypatch.setenv(MSDA.FORCE_PYTORCH_ENV, "1")
    else:
        # The variable is read on every call, so removing it here takes effect at once.
        monkeypatch.delenv(MSDA.FORCE_PYTORCH_ENV, raising=False)
        if MSDA.msda_backend(backend) != backend:
            pytest.skip(
                f"the compiled deformable-attention op has no {backend} kernel here (not built "
                "or not loadable; rebuild with: pip install --no-build-isolation -e .)"
            )
    calls: Counter[str] = Counter()
    reference = MSDA.ms_deform_attn_pytorch

    def counted_reference(*args, **kwargs):
        calls["pytorch"] += 1
        return reference(*args, **kwargs)

    monkeypatch.setattr(MSDA, "ms_deform_attn_pytorch", counted_reference)
    MSDA.msda_backend("cpu")  # loads the compiled op, if there is one, so that it can be wrapped
    if hasattr(torch.ops.unipercept, "ms_deform_attn_forward"):
        compiled = torch.ops.unipercept.ms_deform_attn_forward

        def counted_compiled(value, *args, **kwargs):
            calls[value.device.type] += 1
            return compiled(value, *args, **kwargs)

        monkeypatch.setattr(torch.ops.unipercept, "ms_deform_attn_forward", counted_compiled)
    return calls


def assert_attention_ran(calls: Counter[str], backend: str) -> None:
    """Every deformable attention since :func:`use_attention_backend` ran on ``backend``."""
    assert calls[backend] > 0 and set(calls) == {backend}, dict(calls)


def run(model, images, sizes, text, mask, *, pooled):
    padding = image_padding_mask(sizes, images.shape[-2], images.shape[-1])
    with torch.no_grad():
        return model(images, padding, [tuple(s) for s in sizes.tolist()], text, mask, pooled=pooled)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["det", "grounding"])
def test_image_case_every_stage(uninext_model, uninext_case, monkeypatch, name, backend) -> None:
    calls = use_attention_backend(backend, monkeypatch)
    model = uninext_model
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
    assert_attention_ran(calls, backend)
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


def test_masks_of_chosen_queries_equal_the_full_pass(uninext_model, uninext_case) -> None:
    """Skipping masks in the forward pass and computing them for the kept queries only gives
    the same logits as computing all of them (UNINEXT's way)."""
    from unipercept.modeling.uninext.backbones import image_padding_mask

    case = uninext_case("det")
    images, sizes = case["input.images"], case["input.image_sizes"]
    padding = image_padding_mask(sizes, *images.shape[-2:])
    arguments = (images, padding, [tuple(s) for s in sizes.tolist()], case["text.hidden"])
    with torch.no_grad():
        lazy = uninext_model(
            *arguments, case["input.attention_mask"], pooled=False, with_masks=False
        )
        assert lazy.mask_logits is None
        for image, queries in ((0, torch.tensor([3, 0, 29])), (1, torch.tensor([7]))):
            ours = uninext_model.query_mask_logits(lazy, image, queries)
            close(ours, case["out.pred_mask_logits"][image][queries], 5e-3)


def test_a_backbone_that_pads_to_32_refuses_unpadded_images(uninext_model, monkeypatch) -> None:
    """ConvNeXt and ViT need inputs padded to multiples of 32; a preprocessor that does not
    pad is refused in one line instead of answering from cropped borders."""
    monkeypatch.setattr(uninext_model.backbone, "size_divisibility", 32)
    assert uninext_model.default_preprocess(short_size=80).size_divisibility == 32
    images = torch.zeros(1, 3, 80, 107)
    padding = torch.zeros(1, 80, 107, dtype=torch.bool)
    text, mask = torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="padded to multiples of 32"):
        uninext_model(images, padding, [(80, 107)], text, mask, pooled=False)
