"""UNINEXT's architecture, read from a checkpoint's key names and shapes, and the model built
from it.

:func:`architecture_from_shapes` needs nothing but the state dict's shapes: backbone kind and
widths, text-encoder size, layer and query counts, which optional heads exist. Three numbers
cannot be read from shapes and follow UNINEXT's fixed choices: 8 attention heads in the
transformer and its fusion block (hard-coded in UNINEXT), BERT's conventional head count for
its width (:func:`unipercept.modeling.uninext.text.bert_heads_for_width`), and the template
side (256 in UNINEXT's configs; a test-time option here). The result is a plain dict, stored
in a model folder's ``config.yaml`` as the keyword arguments of :func:`build_uninext`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from unipercept.modeling.deformable_transformer import DecoderLayer, EncoderLayer
from unipercept.modeling.uninext.backbones import backbone_spec_from_shapes, build_backbone
from unipercept.modeling.uninext.fusion import VLFusion
from unipercept.modeling.uninext.heads import MLP, StillClassifier, VLAlign
from unipercept.modeling.uninext.masks import UninextMaskBranch
from unipercept.modeling.uninext.model import Uninext
from unipercept.modeling.uninext.reid import UninextReidHead
from unipercept.modeling.uninext.template import TemplateEncoder
from unipercept.modeling.uninext.text import UninextTextEncoder, bert_config_from_shapes
from unipercept.modeling.uninext.transformer import (
    FeatureResizer,
    UninextDecoder,
    UninextEncoder,
    UninextTransformer,
)

# UNINEXT hard-codes 8 heads in its transformer and fusion; shapes only give heads x points.
NUM_HEADS = 8
FUSION_HEADS = 8
TEMPLATE_SIZE = 256
BERT_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)


class ArchitectureError(ValueError):
    """The shapes do not describe a UNINEXT model; the message names the first key at fault."""


def architecture_from_shapes(
    shapes: Mapping[str, Sequence[int]], *, template_size: int = TEMPLATE_SIZE
) -> dict[str, Any]:
    """The keyword arguments of :func:`build_uninext` for a UNINEXT state dict.

    Args:
        shapes: UNINEXT key -> shape (``{k: tuple(v.shape) for k, v in state.items()}``).
        template_size: SOT/VOS template side (256 in UNINEXT's configs).

    Raises:
        ArchitectureError: a required key is missing or a shape does not fit.
    """
    shapes = {key: tuple(shape) for key, shape in shapes.items()}

    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise ArchitectureError(f"missing key {key}")
        return shapes[key]

    def count(prefix: str) -> int:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        found = {int(m.group(1)) for key in shapes if (m := pattern.match(key))}
        return max(found) + 1 if found else 0

    def sub(prefix: str) -> dict[str, tuple[int, ...]]:
        return {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}

    transformer = "detr.detr.transformer."
    num_levels, hidden_dim = shape(transformer + "level_embed")
    num_queries = shape(transformer + "tgt_embed.weight")[0]
    encoder_layers = count(transformer + "encoder.layers.")
    decoder_layers = count(transformer + "decoder.layers.")
    if encoder_layers == 0 or decoder_layers < 2:
        raise ArchitectureError(
            f"{encoder_layers} encoder and {decoder_layers} decoder layers under {transformer}: "
            "UNINEXT has at least one and two"
        )
    ffn_dim = shape(transformer + "encoder.layers.0.linear1.weight")[0]

    def points(prefix: str) -> int:
        per_head_level = shape(prefix + "attention_weights.weight")[0] // (NUM_HEADS * num_levels)
        if per_head_level * NUM_HEADS * num_levels != shape(prefix + "attention_weights.weight")[0]:
            raise ArchitectureError(
                f"{prefix}attention_weights.weight: not 8 heads x levels x points"
            )
        return per_head_level

    fusion = transformer + "encoder.vl_layers.0.b_attn."
    text_dim = shape(fusion + "gamma_l")[0]
    try:
        bert = bert_config_from_shapes(sub("text_encoder.body.model."))
    except (KeyError, ValueError) as error:
        raise ArchitectureError(f"text encoder (text_encoder.body.model.*): {error}") from None
    if bert.hidden_size != text_dim:
        raise ArchitectureError(
            f"{fusion}gamma_l: fusion text width {text_dim}, BERT width {bert.hidden_size}"
        )
    try:
        backbone = backbone_spec_from_shapes(sub("detr.detr.backbone.0.backbone."), in_channels=3)
        has_template = any(k.startswith("detr.detr.ref_backbone.") for k in shapes)
        template_backbone = (
            backbone_spec_from_shapes(sub("detr.detr.ref_backbone.0.backbone."), in_channels=4)
            if has_template
            else None
        )
    except ValueError as error:
        raise ArchitectureError(f"backbone: {error}") from None
    reid = "detr.reid_embed_head.0."
    reid_layers = count(reid + "layers.")
    return {
        "backbone": backbone,
        "template_backbone": template_backbone,
        "text": {key: getattr(bert, key) for key in BERT_KEYS},
        "hidden_dim": hidden_dim,
        "num_levels": num_levels,
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "ffn_dim": ffn_dim,
        "encoder_points": points(transformer + "encoder.layers.0.self_attn."),
        "decoder_points": points(transformer + "decoder.layers.0.cross_attn."),
        "num_queries": num_queries,
        "fusion_dim": shape(fusion + "attn.v_proj.weight")[0],
        "mask_dim": shape("detr.mask_head.lay2.weight")[0],
        "reid_layers": reid_layers,
        "reid_points": points(reid + "layers.0.cross_attn.") if reid_layers else 0,
        "template_size": template_size,
        "denoising_resizer": "detr.resizer.fc.weight" in shapes,
    }


def build_uninext(
    *,
    backbone: Mapping[str, Any],
    template_backbone: Mapping[str, Any] | None,
    text: Mapping[str, int],
    hidden_dim: int = 256,
    num_levels: int = 4,
    encoder_layers: int = 6,
    decoder_layers: int = 6,
    ffn_dim: int = 2048,
    encoder_points: int = 4,
    decoder_points: int = 4,
    num_queries: int = 900,
    fusion_dim: int = 2048,
    mask_dim: int = 8,
    reid_layers: int = 2,
    reid_points: int = 4,
    template_size: int = TEMPLATE_SIZE,
    denoising_resizer: bool = True,
) -> Uninext:
    """A randomly initialised UNINEXT of this architecture (load weights after), in eval mode.

    Arguments as :func:`architecture_from_shapes` returns them.
    """
    from transformers import BertConfig

    bert = BertConfig(**dict(text), attn_implementation="eager")
    text_dim = bert.hidden_size
    layer_options = {
        "hidden_dim": hidden_dim,
        "ffn_dim": ffn_dim,
        "num_heads": NUM_HEADS,
        "num_levels": num_levels,
        "dropout": 0.0,
    }
    encoder = UninextEncoder(
        layers=[
            EncoderLayer(**layer_options, num_points=encoder_points) for _ in range(encoder_layers)
        ],
        vl_layers=[
            VLFusion(
                visual_dim=hidden_dim,
                text_dim=text_dim,
                embed_dim=fusion_dim,
                num_heads=FUSION_HEADS,
                init_gamma=1.0 / encoder_layers,
            )
        ]
        + [nn.Identity() for _ in range(encoder_layers - 1)],
    )
    decoder = UninextDecoder(
        layers=[
            DecoderLayer(**layer_options, num_points=decoder_points) for _ in range(decoder_layers)
        ],
        hidden_dim=hidden_dim,
    )
    transformer = UninextTransformer(
        encoder=encoder,
        decoder=decoder,
        num_queries=num_queries,
        hidden_dim=hidden_dim,
        text_dim=text_dim,
        num_levels=num_levels,
    )
    image_backbone = build_backbone(backbone)
    channels = list(image_backbone.out_channels)
    input_proj = nn.ModuleList(
        [nn.Sequential(nn.Conv2d(c, hidden_dim, 1), nn.GroupNorm(32, hidden_dim)) for c in channels]
        + [
            nn.Sequential(
                nn.Conv2d(channels[-1] if level == 0 else hidden_dim, hidden_dim, 3, 2, 1),
                nn.GroupNorm(32, hidden_dim),
            )
            for level in range(num_levels - len(channels))
        ]
    )
    box = {"input_dim": hidden_dim, "hidden_dim": hidden_dim, "output_dim": 4, "num_layers": 3}
    template = None
    if template_backbone is not None:
        template = TemplateEncoder(
            ref_backbone=build_backbone(template_backbone),
            hidden_dim=hidden_dim,
            text_dim=text_dim,
            template_size=template_size,
        )
    reid = None
    if reid_layers:
        reid = UninextReidHead(
            num_layers=reid_layers,
            hidden_dim=hidden_dim,
            ffn_dim=ffn_dim,
            num_heads=NUM_HEADS,
            num_levels=num_levels,
            num_points=reid_points,
            embed_dim=hidden_dim,
        )
    model = Uninext(
        text_encoder=UninextTextEncoder.from_config(bert),
        backbone=image_backbone,
        input_proj=input_proj,
        transformer=transformer,
        class_embed=nn.ModuleList(
            [VLAlign(hidden_dim=hidden_dim, text_dim=text_dim) for _ in range(decoder_layers)]
            + [StillClassifier(hidden_dim=hidden_dim)]
        ),
        bbox_embed=nn.ModuleList(MLP(**box) for _ in range(decoder_layers + 1)),
        iou_head=nn.ModuleList(nn.Linear(hidden_dim, 1) for _ in range(decoder_layers)),
        mask_branch=UninextMaskBranch(hidden_dim=hidden_dim, mask_dim=mask_dim),
        reid_head=reid,
        template=template,
        resizer=FeatureResizer(in_dim=text_dim, out_dim=hidden_dim) if denoising_resizer else None,
    )
    return model.eval()
