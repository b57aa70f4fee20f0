"""UNINEXT's model, as its released checkpoints expect it: backbone, input projections, text
encoder, the fusion + DINO transformer, VL-align class heads, box and IoU heads, the dynamic
mask head, the re-id head and the SOT/VOS template encoder.

The model computes raw outputs only (the fixture's ``out.*``); UNINEXT's per-task test-time
rules live in :mod:`unipercept.modeling.uninext.postprocess` and the tasks layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.modeling.outputs import MultiScaleFeatures
from unipercept.modeling.position_encoding import SinePositionEncoding
from unipercept.modeling.uninext.backbones import pixel_padding_masks
from unipercept.modeling.uninext.fusion import uninext_text_bias
from unipercept.modeling.uninext.heads import pool_text
from unipercept.modeling.uninext.masks import memory_to_maps, reference_points_to_pixels
from unipercept.modeling.uninext.preprocess import UninextPreprocessor
from unipercept.modeling.uninext.template import TemplateTokens
from unipercept.modeling.uninext.transformer import (
    FeatureResizer,
    TransformerOutput,
    UninextTransformer,
)

# The resolutions UNINEXT evaluates at, where the model's settings give none: images 800/1333
# (detectron2's defaults), videos 480 (its VIS-19, VOS and R-VOS configs).
DEFAULT_PREPROCESS = {"short_size": 800, "max_size": 1333, "video_size": 480}


@dataclass(frozen=True, eq=False)
class UninextOutput:
    """The raw outputs of one forward pass (UNINEXT's ``outputs`` dict, typed).

    Attributes:
        logits: (B, Q, L) class logits of the last decoder layer against every text token
            (category prompts), or (B, Q, 1) against the pooled prompt (expressions, templates).
        boxes: (B, Q, 4) normalised cxcywh boxes of the last layer (relative to the input size
            of each image, i.e. its valid region).
        iou_logits: (B, Q, 1) predicted-IoU logits of the last layer.
        mask_logits: (B, Q, 1, H/4, W/4) mask logits on the padded input grid at stride 4, or
            None when not asked for.
        embeddings: (B, Q, C) re-id embeddings, or None (no re-id head, or not asked for).
        reference_points: (B, Q, 2) the last layer's input reference centres (normalised),
            around which the dynamic mask convs place their relative coordinates.
        pooled_text: (B, 1, Ct) the pooled fused prompt the logits were scored against, or None
            for category prompts.
        transformer: every intermediate of the transformer.
        features: the projected multi-scale features.
        image_sizes: each image's (h, w) inside the padded batch.
    """

    logits: Tensor
    boxes: Tensor
    iou_logits: Tensor
    mask_logits: Tensor | None
    embeddings: Tensor | None
    reference_points: Tensor
    pooled_text: Tensor | None
    transformer: TransformerOutput
    features: MultiScaleFeatures
    image_sizes: tuple[tuple[int, int], ...]


class Uninext(nn.Module):
    """UNINEXT (Yan et al., CVPR 2023) with its released checkpoints' layout.

    Args:
        text_encoder: BERT over the caption or expression.
        backbone: images -> three maps (strides 8, 16, 32); ``size_divisibility`` attribute.
        input_proj: four projections: three 1x1 conv + GroupNorm on the maps, and a 3x3
            stride-2 conv + GroupNorm on the last map for the fourth level.
        transformer: fusion, encoder, query selection, decoder.
        class_embed: one VL-align head per decoder layer, then the encoder objectness head.
        bbox_embed: one box head per decoder layer, then the encoder's.
        iou_head: one IoU head per decoder layer.
        mask_branch: the mask head over the encoder memory and the dynamic-conv controller.
        reid_head: the re-id embedding head (video checkpoints), or None.
        template: the SOT/VOS template encoder (video checkpoints), or None.
        resizer: UNINEXT's denoising-label resizer (used only in training; kept so that
            checkpoints round-trip), or None.
    """

    def __init__(
        self,
        *,
        text_encoder: nn.Module,
        backbone: nn.Module,
        input_proj: nn.ModuleList,
        transformer: UninextTransformer,
        class_embed: nn.ModuleList,
        bbox_embed: nn.ModuleList,
        iou_head: nn.ModuleList,
        mask_branch: nn.Module,
        reid_head: nn.Module | None = None,
        template: nn.Module | None = None,
        resizer: FeatureResizer | None = None,
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.backbone = backbone
        self.input_proj = input_proj
        self.transformer = transformer
        self.class_embed = class_embed
        self.bbox_embed = bbox_embed
        self.iou_head = iou_head
        self.mask_branch = mask_branch
        self.reid_head = reid_head
        self.template = template
        self.resizer = resizer
        self.position = SinePositionEncoding(num_features=transformer.level_embed.shape[1] // 2)
        # "short_size", "max_size", "video_size" the model was saved with (set by its loader).
        self.preprocess_settings: dict[str, int] = {}

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute encoder and decoder activations in the backward pass (less memory, more
        compute; UNINEXT's ``USE_CHECKPOINT``)."""
        self.transformer.encoder.gradient_checkpointing = enabled
        self.transformer.decoder.gradient_checkpointing = enabled

    @property
    def size_divisibility(self) -> int:
        return int(getattr(self.backbone, "size_divisibility", 0))

    def default_preprocess(
        self, *, video: bool = False, short_size: int | None = None, max_size: int | None = None
    ) -> UninextPreprocessor:
        """UNINEXT's test-time resizing at the resolution the model was saved with, padded as
        the backbone needs (ConvNeXt and ViT: to multiples of 32).

        Images: shortest edge ``short_size`` (800), longest at most ``max_size`` (1333).
        Videos: shortest edge ``video_size`` (480), UNINEXT's setting for VIS-19, VOS and R-VOS;
        its own evaluation used 800 for SOT and MOT and 720 for OVIS: pass
        ``preprocess=model.default_preprocess(video=True, short_size=800)`` to :meth:`start`
        for those.

        Args:
            video: the video resolution instead of the image one.
            short_size, max_size: override the saved sizes.
        """
        settings = {**DEFAULT_PREPROCESS, **self.preprocess_settings}
        return UninextPreprocessor(
            short_size=short_size or settings["video_size" if video else "short_size"],
            max_size=max_size or settings["max_size"],
            size_divisibility=self.size_divisibility,
        )

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, 256, Ct) BERT's last hidden state."""
        return self.text_encoder(input_ids, attention_mask)

    def encode_template(
        self,
        image: Tensor,
        box_xyxy: Tensor,
        *,
        prior: str | Tensor = "box",
        image_padding: Tensor | None = None,
    ) -> TemplateTokens:
        """An SOT/VOS target as prompt tokens (video checkpoints only).

        Args:
            image: (3, H, W) the normalised frame as the search branch gets it (resized and,
                where the backbone needs it, padded).
            box_xyxy: (4,) the target's box in ``image``'s pixels.
            prior: ``"box"`` (SOT) or the target's (H, W) mask (VOS) as the 4th channel.
            image_padding: (H, W) bool, True on ``image``'s padding.

        Returns:
            tokens (1, T, Ct) and their bool mask (1, T); pass both to :meth:`forward` with
            ``pooled=True`` (concatenate two templates with
            :func:`~unipercept.modeling.uninext.template.concat_templates`).
        """
        if self.template is None:
            raise ValueError(
                "this UNINEXT checkpoint has no template encoder (an image-stage model); SOT "
                "and VOS need a video (stage-3) checkpoint"
            )
        dtype = self.input_proj[0][0].weight.dtype
        if isinstance(prior, Tensor):
            prior = prior.to(dtype)
        return self.template.encode_prompt(
            image.to(dtype), box_xyxy, self.input_proj, prior=prior, image_pad_mask=image_padding
        )

    def features(self, images: Tensor, padding: Tensor) -> MultiScaleFeatures:
        """The four projected levels of a padded batch, flattened.

        Args:
            images: (B, 3, H, W) normalised, zero-padded.
            padding: (B, H, W) bool, True on padding pixels.
        """
        maps = self.backbone(images)  # 3 x (B, C_l, H_l, W_l)
        masks = pixel_padding_masks(padding, maps)  # 3 x (B, H_l, W_l), True on padding
        sources = [proj(m) for proj, m in zip(self.input_proj, maps, strict=False)]
        for level in range(len(maps), len(self.input_proj)):
            previous = maps[-1] if level == len(maps) else sources[-1]
            sources.append(self.input_proj[level](previous))
            # UNINEXT resizes the finest level's mask for every extra level.
            masks.append(
                F.interpolate(masks[0][None].float(), size=sources[-1].shape[-2:]).to(torch.bool)[0]
            )
        return flatten_levels(sources, masks, self.position)

    def forward(
        self,
        images: Tensor,
        padding: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        text: Tensor,
        text_mask: Tensor,
        *,
        pooled: bool,
        with_masks: bool = True,
        with_embeddings: bool = True,
    ) -> UninextOutput:
        """Args:
        images: (B, 3, H, W) normalised, zero-padded batch; padding: (B, H, W) bool.
        image_sizes: each image's (h, w) inside the padded batch.
        text: (B, L, Ct) the text encoder's output, or template tokens.
        text_mask: (B, L) the mask as UNINEXT receives it: int64 from the tokenizer, bool
            for templates (see :func:`unipercept.modeling.uninext.fusion.uninext_text_bias`).
        pooled: score queries against the masked mean of the fused prompt (expressions,
            templates) instead of against every token (category names).
        with_masks, with_embeddings: compute the mask logits / re-id embeddings.
        """
        images = images.to(self.input_proj[0][0].weight.dtype)  # a bf16 / fp16 model too
        divisor = self.size_divisibility
        if divisor and (images.shape[-2] % divisor or images.shape[-1] % divisor):
            raise ValueError(
                f"images are {images.shape[-2]}x{images.shape[-1]}: this backbone needs them "
                f"padded to multiples of {divisor} (use model.default_preprocess())"
            )
        features = self.features(images, padding)
        bias = uninext_text_bias(text_mask, dtype=text.dtype)
        out = self.transformer(
            features, text, bias, class_heads=self.class_embed, box_heads=self.bbox_embed
        )
        last = out.hidden[-1]  # (B, Q, C)
        num_layers = out.hidden.shape[0]
        pooled_text = pool_text(out.text, text_mask) if pooled else None
        logits = self.class_embed[num_layers - 1](last, pooled_text if pooled else out.text)
        iou_logits = self.iou_head[num_layers - 1](last)
        boxes = out.references[-1]  # the decoder already applied the last box head
        # The mask convs centre on the last layer's *input* reference (the previous layer's
        # boxes), as UNINEXT's inter_references[-2].
        previous = out.references[-2] if num_layers > 1 else out.init_reference
        reference_points = previous[..., :2]
        mask_logits = None
        if with_masks:
            sizes = torch.as_tensor(image_sizes, device=images.device)  # (B, 2) h, w
            mask_logits = self.mask_branch(
                memory_to_maps(out.memory, features.shapes[:3]),
                last,
                reference_points_to_pixels(reference_points, sizes),
            )
        embeddings = None
        if with_embeddings and self.reid_head is not None:
            embeddings = self.reid_head(last, boxes.detach(), out.memory.detach(), features)
        return UninextOutput(
            logits=logits,
            boxes=boxes,
            iou_logits=iou_logits,
            mask_logits=mask_logits,
            embeddings=embeddings,
            reference_points=reference_points,
            pooled_text=pooled_text,
            transformer=out,
            features=features,
            image_sizes=tuple((int(h), int(w)) for h, w in image_sizes),
        )

    def query_mask_logits(self, output: UninextOutput, image: int, queries: Tensor) -> Tensor:
        """Mask logits of some queries of one image: ``output.mask_logits[image][queries]``,
        computed for those queries only when the forward pass skipped masks
        (``with_masks=False``). A query's mask depends only on its own dynamic parameters and
        centre, so this gives the same numbers for a fraction of the work (the tasks keep 1 to
        100 of 900 queries).

        Args:
            output: a forward pass's output.
            image: the image's index in the batch.
            queries: (N,) int64 query indices.

        Returns:
            (N, 1, H/4, W/4) logits on the padded batch's grid.
        """
        if output.mask_logits is not None:
            return output.mask_logits[image][queries]
        t = output.transformer
        maps = memory_to_maps(t.memory[image : image + 1], output.features.shapes[:3])
        size = torch.as_tensor([output.image_sizes[image]], device=t.memory.device)  # (1, 2)
        centres = reference_points_to_pixels(
            output.reference_points[image : image + 1, queries], size
        )
        return self.mask_branch(maps, t.hidden[-1][image : image + 1, queries], centres)[0]


def flatten_levels(
    sources: Sequence[Tensor], masks: Sequence[Tensor], position: SinePositionEncoding
) -> MultiScaleFeatures:
    """Flattens projected maps (B, C, H_l, W_l) and their padding masks (B, H_l, W_l) into the
    encoder's layout, with each level's sine position encoding (level embeddings are added by
    the transformer)."""
    tokens, positions, valid, shapes, ratios = [], [], [], [], []
    for source, mask in zip(sources, masks, strict=True):
        height, width = source.shape[-2:]
        shapes.append((int(height), int(width)))
        tokens.append(source.flatten(2).transpose(1, 2))  # (B, HW, C)
        positions.append(position(~mask, source.dtype).flatten(2).transpose(1, 2))  # (B, HW, C)
        valid.append((~mask).flatten(1))  # (B, HW)
        valid_h = (~mask[:, :, 0]).sum(1).to(source.dtype) / height  # (B,)
        valid_w = (~mask[:, 0, :]).sum(1).to(source.dtype) / width  # (B,)
        ratios.append(torch.stack((valid_w, valid_h), -1))  # (B, 2)
    device = tokens[0].device
    spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=device)  # (L, 2)
    level_start_index = torch.cat(
        (spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1])
    )
    return MultiScaleFeatures(
        tokens=torch.cat(tokens, 1),
        position=torch.cat(positions, 1),
        valid=torch.cat(valid, 1),
        spatial_shapes=spatial_shapes,
        level_start_index=level_start_index,
        valid_ratios=torch.stack(ratios, 1),  # (B, L, 2)
        shapes=tuple(shapes),
        maps=tuple(sources),
    )
