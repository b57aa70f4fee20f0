"""Convert a transformers ``DeformableDetrForObjectDetection`` into :class:`DeformableDETR`.

Plain, iterative-box-refinement and two-stage checkpoints all convert; the result computes the
same class logits and boxes (tested against transformers). Weights on the hub load by name
where a network is reachable, or from a local folder.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from unipercept.modeling.backbone.hf_backbone import HFBackbone
from unipercept.modeling.build import build_deformable_detr
from unipercept.modeling.detector import DeformableDETR

if TYPE_CHECKING:
    from transformers import DeformableDetrForObjectDetection

# transformers name -> unipercept name, applied in order to every key (after "model." is gone).
_RENAMES = [
    (r"^backbone\.model\.", "backbone.model."),
    (r"^input_proj\.", "neck.input_proj."),
    (r"^level_embed$", "neck.level_embed"),
    (r"^query_position_embeddings\.", "query_selection.query_embed."),
    (r"^reference_points\.", "query_selection.reference_points."),
    (r"^enc_output\.", "query_selection.output_proj."),
    (r"^enc_output_norm\.", "query_selection.output_norm."),
    (r"^pos_trans\.", "query_selection.position_proj."),
    (r"^pos_trans_norm\.", "query_selection.position_norm."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.layers.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"encoder.layers.\1.ffn."),
    (r"^decoder\.layers\.(\d+)\.self_attn\.o_proj\.", r"decoder.layers.\1.self_attn.out_proj."),
    (r"^decoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"decoder.layers.\1.norm1."),
    (r"^decoder\.layers\.(\d+)\.encoder_attn\.", r"decoder.layers.\1.cross_attn."),
    (r"^decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"decoder.layers.\1.norm2."),
    (r"^decoder\.layers\.(\d+)\.final_layer_norm\.", r"decoder.layers.\1.norm3."),
    (r"^decoder\.layers\.(\d+)\.mlp\.", r"decoder.layers.\1.ffn."),
]


def convert_state_dict(state: dict[str, Tensor], num_decoder_layers: int) -> dict[str, Tensor]:
    """Renames a transformers Deformable DETR state dict to unipercept's names.

    The decoder's copies of the heads (``model.decoder.{class,bbox}_embed``, tied to the outer
    heads in transformers) are dropped; the extra head of a two-stage model (index
    ``num_decoder_layers``) scores the encoder proposals.
    """
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(("model.decoder.class_embed.", "model.decoder.bbox_embed.")):
            continue
        head = re.match(r"^(class_embed|bbox_embed)\.(\d+)\.(.*)$", key)
        if head:
            kind, layer, rest = head.group(1), int(head.group(2)), head.group(3)
            if layer == num_decoder_layers:
                target = (
                    "query_selection.class_head"
                    if kind == "class_embed"
                    else "query_selection.box_head"
                )
            else:
                target = f"{'class_heads' if kind == 'class_embed' else 'box_heads'}.{layer}"
            converted[f"{target}.{rest}"] = value
            continue
        name = key.removeprefix("model.")
        for pattern, replacement in _RENAMES:
            name = re.sub(pattern, replacement, name)
        converted[name] = value
    return converted


def from_hf_deformable_detr(
    model_or_path: DeformableDetrForObjectDetection | str | Path,
) -> DeformableDETR:
    """Builds a :class:`DeformableDETR` with the architecture and weights of a transformers
    Deformable DETR.

    Args:
        model_or_path: a ``DeformableDetrForObjectDetection``, or a name or folder that its
            ``from_pretrained`` loads (e.g. ``"SenseTime/deformable-detr"`` where the hub is
            reachable).

    Returns:
        the converted detector, in the same train/eval mode as the input model (eval when
        loaded from a path).

    Raises:
        ValueError: for variants unipercept does not implement (timm backbones, learned
            position embeddings).
    """
    from transformers import DeformableDetrForObjectDetection

    if isinstance(model_or_path, (str, Path)):
        hf = DeformableDetrForObjectDetection.from_pretrained(str(model_or_path)).eval()
    else:
        hf = model_or_path
    config = hf.config
    if getattr(config, "use_timm_backbone", False):
        raise ValueError(
            "timm backbones are not supported (timm needs torchvision); convert a "
            "checkpoint that uses a transformers AutoBackbone"
        )
    if config.position_embedding_type != "sine":
        raise ValueError(
            f"position_embedding_type {config.position_embedding_type!r} is not "
            "supported; only 'sine'"
        )
    detector = build_deformable_detr(
        backbone=HFBackbone(model=copy.deepcopy(hf.model.backbone.model), freeze_at=2),
        num_classes=config.num_labels,
        hidden_dim=config.d_model,
        num_levels=config.num_feature_levels,
        num_queries=config.two_stage_num_proposals if config.two_stage else config.num_queries,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        encoder_ffn_dim=config.encoder_ffn_dim,
        decoder_ffn_dim=config.decoder_ffn_dim,
        encoder_heads=config.encoder_attention_heads,
        decoder_heads=config.decoder_attention_heads,
        encoder_points=config.encoder_n_points,
        decoder_points=config.decoder_n_points,
        dropout=config.dropout,
        activation=config.activation_function,
        box_refine=config.with_box_refine,
        two_stage=config.two_stage,
    )
    detector.load_state_dict(
        convert_state_dict(hf.state_dict(), config.decoder_layers), strict=True
    )
    return detector.train(hf.training)
