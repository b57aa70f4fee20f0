"""Assembling the models from built parts and plain hyper-parameters (what configs call)."""

from __future__ import annotations

from torch import nn

from unipercept.modeling.backbone.base import Backbone
from unipercept.modeling.deformable_transformer import (
    DecoderLayer,
    DeformableDecoder,
    DeformableEncoder,
    EncoderLayer,
)
from unipercept.modeling.denoising import DenoisingQueries
from unipercept.modeling.detector import DeformableDETR, detection_heads
from unipercept.modeling.fusion import BiAttentionLayer, BiXAttnFusion
from unipercept.modeling.heads import MLP
from unipercept.modeling.mask_head import MaskBranch
from unipercept.modeling.neck import MultiScaleNeck
from unipercept.modeling.prompt import (
    AnnotationPromptEncoder,
    CategoryPromptEncoder,
    ExpressionPromptEncoder,
    TemplatePromptEncoder,
    TextEncoder,
)
from unipercept.modeling.query_selection import StaticQueries, TwoStageQueries
from unipercept.modeling.rescorer import ReferringRescorer
from unipercept.modeling.unipercept import UniPercept
from unipercept.modeling.unipercept_heads import UniPerceptHeads


def build_deformable_detr(
    *,
    backbone: Backbone,
    num_classes: int,
    hidden_dim: int = 256,
    num_levels: int = 4,
    num_queries: int = 300,
    encoder_layers: int = 6,
    decoder_layers: int = 6,
    encoder_ffn_dim: int = 1024,
    decoder_ffn_dim: int = 1024,
    encoder_heads: int = 8,
    decoder_heads: int = 8,
    encoder_points: int = 4,
    decoder_points: int = 4,
    dropout: float = 0.1,
    activation: str = "relu",
    box_refine: bool = False,
    two_stage: bool = False,
    mixed_query_selection: bool = False,
    look_forward_twice: bool = False,
    denoising_groups: int = 0,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
) -> DeformableDETR:
    """Deformable DETR with the paper's defaults; the DINO options are off unless asked for.

    Args:
        backbone: any :class:`Backbone`; its maps become the finest levels.
        num_classes: K.
        two_stage: queries from encoder proposals (needs ``box_refine``).
        mixed_query_selection: with ``two_stage``, learned content and proposal positions.
        look_forward_twice: DINO's box refinement gradient path.
        denoising_groups: > 0 adds that many groups of denoising queries in training.

    Returns:
        the detector, randomly initialised apart from the backbone.
    """
    if mixed_query_selection and not two_stage:
        raise ValueError("mixed_query_selection needs two_stage=True")
    neck = MultiScaleNeck(
        in_channels=backbone.out_channels, hidden_dim=hidden_dim, num_levels=num_levels
    )
    encoder = DeformableEncoder(
        [
            EncoderLayer(
                hidden_dim=hidden_dim,
                ffn_dim=encoder_ffn_dim,
                num_heads=encoder_heads,
                num_levels=num_levels,
                num_points=encoder_points,
                dropout=dropout,
                activation=activation,
            )
            for _ in range(encoder_layers)
        ]
    )
    decoder = DeformableDecoder(
        [
            DecoderLayer(
                hidden_dim=hidden_dim,
                ffn_dim=decoder_ffn_dim,
                num_heads=decoder_heads,
                num_levels=num_levels,
                num_points=decoder_points,
                dropout=dropout,
                activation=activation,
            )
            for _ in range(decoder_layers)
        ],
        look_forward_twice=look_forward_twice,
    )
    class_heads, box_heads = detection_heads(
        num_layers=decoder_layers,
        hidden_dim=hidden_dim,
        num_classes=num_classes,
        box_refine=box_refine,
    )
    if two_stage:
        query_selection: nn.Module = TwoStageQueries(
            num_queries=num_queries,
            hidden_dim=hidden_dim,
            class_head=nn.Linear(hidden_dim, num_classes),
            box_head=MLP(input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=4, num_layers=3),
            mixed=mixed_query_selection,
        )
    else:
        query_selection = StaticQueries(num_queries=num_queries, hidden_dim=hidden_dim)
    denoising = None
    if denoising_groups > 0:
        denoising = DenoisingQueries(
            num_classes=num_classes,
            hidden_dim=hidden_dim,
            num_groups=denoising_groups,
            label_noise_ratio=label_noise_ratio,
            box_noise_scale=box_noise_scale,
        )
    return DeformableDETR(
        backbone=backbone,
        neck=neck,
        encoder=encoder,
        decoder=decoder,
        query_selection=query_selection,
        class_heads=class_heads,
        box_heads=box_heads,
        box_refine=box_refine,
        denoising=denoising,
    )


def build_unipercept(
    *,
    backbone: Backbone,
    text_encoder: TextEncoder | None = None,
    annotation_backbone: Backbone | None = None,
    hidden_dim: int = 256,
    num_levels: int = 4,
    num_queries: int = 300,
    encoder_layers: int = 6,
    decoder_layers: int = 6,
    ffn_dim: int = 1024,
    num_heads: int = 8,
    num_points: int = 4,
    dropout: float = 0.1,
    fusion_layers: int = 1,
    box_refine: bool = True,
    two_stage: bool = True,
    mixed_query_selection: bool = False,
    look_forward_twice: bool = False,
    prompt_conditioned_queries: bool = False,
    mask_dim: int = 8,
    mask_channels: int = 128,
    embedding_dim: int = 256,
    annotation_crop_size: int = 128,
    annotation_context: float = 2.0,
    annotation_encoder: str = "pooled",
    train_only_mask_branch: bool = False,
    referring_rescorer: bool = False,
) -> UniPercept:
    """The prompt-driven model with UNINEXT's defaults (two-stage, box refinement, one Bi-XAtt
    layer).

    Args:
        backbone: image backbone; a first output at stride 4 gives stride-4 masks.
        text_encoder: serves category and expression prompts (None: neither).
        annotation_backbone: a second backbone for annotation prompts (None: no SOT/VOS);
            its first convolution is extended with the prior channel.
        annotation_encoder: ``"template"``: UNINEXT's template path
            (:class:`~unipercept.modeling.prompt.TemplatePromptEncoder`: the image neck's
            projections, levels fused at the finest, one token per position); ``"pooled"``:
            the earlier encoder with its own projections, each level pooled to 4x4 tokens
            (the default, so folders saved before the option keep loading).
        fusion_layers: Bi-XAtt layers (0 disables early fusion).
        train_only_mask_branch: Mask Frozen-DETR mode (see :meth:`UniPercept.freeze_detector`).
        referring_rescorer: add a :class:`~unipercept.modeling.rescorer.ReferringRescorer` for
            expression prompts (it answers as without it until fitted, see
            :func:`unipercept.engine.rescorer_fit.fit_rescorer`).

    Returns:
        the model, randomly initialised apart from the backbones and the text encoder.
    """
    if mixed_query_selection and not two_stage:
        raise ValueError("mixed_query_selection needs two_stage=True")
    if text_encoder is None and annotation_backbone is None:
        raise ValueError(
            "give a text_encoder, an annotation_backbone, or both: the model needs "
            "at least one kind of prompt"
        )
    stride4 = backbone.out_strides[0] == 4
    neck_channels = backbone.out_channels[1:] if stride4 else backbone.out_channels
    neck = MultiScaleNeck(in_channels=neck_channels, hidden_dim=hidden_dim, num_levels=num_levels)
    layer = {
        "hidden_dim": hidden_dim,
        "ffn_dim": ffn_dim,
        "num_heads": num_heads,
        "num_levels": num_levels,
        "num_points": num_points,
        "dropout": dropout,
    }
    encoder = DeformableEncoder([EncoderLayer(**layer) for _ in range(encoder_layers)])
    decoder = DeformableDecoder(
        [DecoderLayer(**layer) for _ in range(decoder_layers)],
        look_forward_twice=look_forward_twice,
    )
    prompt_encoders: dict[str, nn.Module] = {}
    if text_encoder is not None:
        prompt_encoders["category"] = CategoryPromptEncoder(text=text_encoder)
        prompt_encoders["expression"] = ExpressionPromptEncoder(text=text_encoder)
    if annotation_backbone is not None:
        if annotation_encoder not in ("template", "pooled"):
            raise ValueError(
                f"annotation_encoder must be 'template' or 'pooled', got {annotation_encoder!r}"
            )
        template_channels = tuple(annotation_backbone.out_channels)[-len(neck_channels) :]
        if annotation_encoder == "template" and template_channels != tuple(neck_channels):
            raise ValueError(
                "the template path shares the image neck's projections, so the annotation "
                f"backbone's maps need the image backbone's channels {tuple(neck_channels)}, "
                f"got {tuple(annotation_backbone.out_channels)}"
            )
        encoder_class = (
            TemplatePromptEncoder if annotation_encoder == "template" else AnnotationPromptEncoder
        )
        prompt_encoders["annotation"] = encoder_class(
            backbone=annotation_backbone,
            hidden_dim=hidden_dim,
            crop_size=annotation_crop_size,
            context_factor=annotation_context,
        )
    fusion = None
    if fusion_layers > 0:
        fusion = BiXAttnFusion(
            [
                BiAttentionLayer(hidden_dim=hidden_dim, num_heads=num_heads, dropout=dropout)
                for _ in range(fusion_layers)
            ]
        )
    if two_stage:
        # Proposals are class-agnostic: one objectness score decides which become queries.
        query_selection: nn.Module = TwoStageQueries(
            num_queries=num_queries,
            hidden_dim=hidden_dim,
            class_head=nn.Linear(hidden_dim, 1),
            box_head=MLP(input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=4, num_layers=3),
            mixed=mixed_query_selection,
        )
    else:
        query_selection = StaticQueries(num_queries=num_queries, hidden_dim=hidden_dim)
    heads = UniPerceptHeads(
        hidden_dim=hidden_dim,
        num_layers=decoder_layers,
        box_refine=box_refine,
        mask_branch=MaskBranch(
            in_channels=hidden_dim,
            lateral_channels=backbone.out_channels[0] if stride4 else None,
            channels=mask_channels,
            mask_dim=mask_dim,
        ),
        embedding_dim=embedding_dim,
    )
    model = UniPercept(
        backbone=backbone,
        neck=neck,
        prompt_encoders=prompt_encoders,
        fusion=fusion,
        encoder=encoder,
        decoder=decoder,
        query_selection=query_selection,
        heads=heads,
        box_refine=box_refine,
        prompt_conditioned_queries=prompt_conditioned_queries,
        rescorer=(
            ReferringRescorer(hidden_dim=hidden_dim, num_heads=num_heads)
            if referring_rescorer
            else None
        ),
    )
    if train_only_mask_branch:
        model.freeze_detector()
    return model
