"""The converted detector computes what transformers' Deformable DETR computes."""

from __future__ import annotations

import pytest
import torch
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

from unipercept.modeling import StaticQueries, TwoStageQueries
from unipercept.modeling.hf_import import from_hf_deformable_detr
from unipercept.ops import msda_backend
from unipercept.structures import ImageBatch

VARIANTS = {
    "plain": {"with_box_refine": False, "two_stage": False},
    "box_refine": {"with_box_refine": True, "two_stage": False},
    "two_stage": {"with_box_refine": True, "two_stage": True},
}
BACKENDS = ["pytorch"] + (["cpu"] if msda_backend("cpu") == "cpu" else [])


def tiny_config(**variant) -> DeformableDetrConfig:
    backbone = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        out_features=["stage2", "stage3", "stage4"],
    )
    return DeformableDetrConfig(
        backbone_config=backbone,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        d_model=64,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        num_queries=20,
        two_stage_num_proposals=20,
        num_labels=5,
        auxiliary_loss=True,
        **variant,
    )


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, ImageBatch]:
    """Two images, the second padded at the bottom and right."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 128, 160, generator=generator)
    mask = torch.ones(2, 128, 160, dtype=torch.long)
    mask[1, 100:, :] = 0
    mask[1, :, 120:] = 0
    sizes = ((128, 160), (100, 120))
    return (
        pixels,
        mask,
        ImageBatch(tensor=pixels, valid=mask.bool(), image_sizes=sizes, original_sizes=sizes),
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_detector_matches_transformers(variant, backend, monkeypatch):
    if backend == "pytorch":
        monkeypatch.setenv("UNIPERCEPT_MSDA_FORCE_PYTORCH", "1")
    assert msda_backend("cpu") == backend
    torch.manual_seed(1)
    hf = DeformableDetrForObjectDetection(tiny_config(**VARIANTS[variant])).eval()
    ours = from_hf_deformable_detr(hf).eval()
    expected_queries = TwoStageQueries if variant == "two_stage" else StaticQueries
    assert isinstance(ours.query_selection, expected_queries)
    pixels, mask, batch = padded_batch()
    # transformers fills auxiliary_outputs (every layer's predictions) only when given labels.
    labels = [
        {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}
    ] * 2
    with torch.no_grad():
        reference = hf(pixel_values=pixels, pixel_mask=mask, labels=labels)
        output = ours(batch)
    assert output.logits.shape == (3, 2, 20, 5)
    torch.testing.assert_close(output.logits[-1], reference.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(output.boxes[-1], reference.pred_boxes, atol=1e-4, rtol=0)
    assert len(reference.auxiliary_outputs) == 2
    for layer, auxiliary in enumerate(reference.auxiliary_outputs):
        torch.testing.assert_close(output.logits[layer], auxiliary["logits"], atol=1e-4, rtol=0)
        torch.testing.assert_close(output.boxes[layer], auxiliary["pred_boxes"], atol=1e-4, rtol=0)
    if variant == "two_stage":
        torch.testing.assert_close(
            output.encoder.logits, reference.enc_outputs_class, atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            output.encoder.boxes, reference.enc_outputs_coord_logits.sigmoid(), atol=1e-4, rtol=0
        )
    else:
        assert output.encoder is None


def test_conversion_from_a_saved_folder(tmp_path):
    torch.manual_seed(2)
    hf = DeformableDetrForObjectDetection(tiny_config(**VARIANTS["box_refine"])).eval()
    hf.save_pretrained(tmp_path)
    ours = from_hf_deformable_detr(tmp_path)
    assert not ours.training
    pixels, mask, batch = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(batch).logits[-1],
            hf(pixel_values=pixels, pixel_mask=mask).logits,
            atol=1e-4,
            rtol=0,
        )


def test_unsupported_variants_are_refused():
    config = tiny_config(**VARIANTS["plain"])
    config.position_embedding_type = "learned"
    with pytest.raises(ValueError, match="position_embedding_type 'learned' is not supported"):
        from_hf_deformable_detr(DeformableDetrForObjectDetection(config))


def test_converted_backbone_uses_frozen_batch_norm_and_freezes_the_stem():
    from unipercept.modeling.backbone import FrozenBatchNorm2d

    ours = from_hf_deformable_detr(
        DeformableDetrForObjectDetection(tiny_config(**VARIANTS["plain"]))
    )
    norms = [m for m in ours.backbone.modules() if "BatchNorm" in type(m).__name__]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    frozen = {n for n, p in ours.backbone.named_parameters() if not p.requires_grad}
    assert any(n.startswith("model.embedder.") for n in frozen)
    assert not any("stages.1." in n for n in frozen)
