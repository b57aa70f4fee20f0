"""Tiny detectors for tests: every option of the real one, small enough for a CPU."""

from __future__ import annotations

from transformers import ResNetConfig

from unipercept.modeling import DeformableDETR, build_deformable_detr
from unipercept.modeling.backbone import HFBackbone


def tiny_backbone() -> HFBackbone:
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        out_features=["stage2", "stage3", "stage4"],
    )
    return HFBackbone.from_config(config, freeze_at=0)


def tiny_detector(
    *,
    num_classes: int = 3,
    num_queries: int = 10,
    two_stage: bool = False,
    box_refine: bool = False,
    mixed: bool = False,
    look_forward_twice: bool = False,
    denoising: bool = False,
    decoder_layers: int = 3,
    dropout: float = 0.0,
) -> DeformableDETR:
    return build_deformable_detr(
        backbone=tiny_backbone(),
        num_classes=num_classes,
        hidden_dim=32,
        num_queries=num_queries,
        encoder_layers=1,
        decoder_layers=decoder_layers,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_heads=2,
        decoder_heads=2,
        encoder_points=2,
        decoder_points=2,
        dropout=dropout,
        box_refine=box_refine,
        two_stage=two_stage,
        mixed_query_selection=mixed,
        look_forward_twice=look_forward_twice,
        denoising_groups=2 if denoising else 0,
    )


def tiny_text_encoder(hidden_dim: int = 32, freeze: bool = False):
    """A small random BERT with the real (offline) MiniLM tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from unipercept.modeling.prompt import TextEncoder, offline_text_model_path

    tokenizer = AutoTokenizer.from_pretrained(offline_text_model_path())
    model = BertModel(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=tokenizer.vocab_size,
        )
    )
    return TextEncoder(model=model, tokenizer=tokenizer, hidden_dim=hidden_dim, freeze=freeze)


def tiny_unipercept(
    *,
    stride4: bool = False,
    two_stage: bool = True,
    annotation: bool = True,
    prompt_conditioned_queries: bool = False,
    num_queries: int = 10,
    annotation_encoder: str = "pooled",
    referring_rescorer: bool = False,
):
    """``annotation_encoder="template"`` gives the annotation prompts a random MobileNetV2
    (the template path shares the image neck, so its channels must match)."""
    from unipercept.modeling import build_unipercept
    from unipercept.modeling.backbone import MobileNetV2

    backbone = MobileNetV2(out_strides=(4, 8, 16, 32) if stride4 else (8, 16, 32))
    return build_unipercept(
        backbone=backbone,
        text_encoder=tiny_text_encoder(),
        annotation_backbone=(
            None
            if not annotation
            else MobileNetV2(out_strides=(8, 16, 32))
            if annotation_encoder == "template"
            else tiny_backbone()
        ),
        annotation_encoder=annotation_encoder,
        hidden_dim=32,
        num_queries=num_queries,
        encoder_layers=1,
        decoder_layers=2,
        ffn_dim=64,
        num_heads=2,
        num_points=2,
        dropout=0.0,
        two_stage=two_stage,
        mask_channels=32,
        embedding_dim=16,
        # 128 for templates: at 64 the coarsest level is 1 x 1, too small for GroupNorm at width
        # 32 and batch 1.
        annotation_crop_size=128 if annotation_encoder == "template" else 64,
        prompt_conditioned_queries=prompt_conditioned_queries,
        referring_rescorer=referring_rescorer,
    )
