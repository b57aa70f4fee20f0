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
