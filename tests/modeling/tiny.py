"""Tiny detectors for tests: every option of the real one, small enough for a CPU."""

from __future__ import annotations

from torch import nn
from transformers import ResNetConfig

from unipercept.modeling import (
    MLP,
    DecoderLayer,
    DeformableDecoder,
    DeformableDETR,
    DeformableEncoder,
    DenoisingQueries,
    EncoderLayer,
    MultiScaleNeck,
    StaticQueries,
    TwoStageQueries,
    detection_heads,
)
from unipercept.modeling.backbone import HFBackbone

WIDTH = 32


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
    backbone = HFBackbone.from_config(
        ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 16, 24, 32],
            depths=[1, 1, 1, 1],
            out_features=["stage2", "stage3", "stage4"],
        ),
        freeze_at=0,
    )
    layer_args = {
        "hidden_dim": WIDTH,
        "ffn_dim": 64,
        "num_heads": 2,
        "num_levels": 4,
        "num_points": 2,
        "dropout": dropout,
    }
    class_heads, box_heads = detection_heads(
        num_layers=decoder_layers, hidden_dim=WIDTH, num_classes=num_classes, box_refine=box_refine
    )
    if two_stage:
        queries: nn.Module = TwoStageQueries(
            num_queries=num_queries,
            hidden_dim=WIDTH,
            class_head=nn.Linear(WIDTH, num_classes),
            box_head=MLP(input_dim=WIDTH, hidden_dim=WIDTH, output_dim=4, num_layers=3),
            mixed=mixed,
        )
    else:
        queries = StaticQueries(num_queries=num_queries, hidden_dim=WIDTH)
    return DeformableDETR(
        backbone=backbone,
        neck=MultiScaleNeck(in_channels=backbone.out_channels, hidden_dim=WIDTH, num_levels=4),
        encoder=DeformableEncoder([EncoderLayer(**layer_args) for _ in range(1)]),
        decoder=DeformableDecoder(
            [DecoderLayer(**layer_args) for _ in range(decoder_layers)],
            look_forward_twice=look_forward_twice,
        ),
        query_selection=queries,
        class_heads=class_heads,
        box_heads=box_heads,
        box_refine=box_refine,
        denoising=DenoisingQueries(num_classes=num_classes, hidden_dim=WIDTH, num_groups=2)
        if denoising
        else None,
    )
