"""Losses of the prompt-driven model: retrieval (focal), boxes, quality, masks (or BoxInst for
box-only data), two-stage proposals, and the association embedding across frames."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.criterion.boxinst import box_projection_loss, color_similarity, pairwise_color_loss
from unipercept.criterion.embedding_loss import contrastive_embedding_loss
from unipercept.criterion.losses import sigmoid_focal_loss
from unipercept.criterion.mask_losses import mask_losses
from unipercept.criterion.matcher import HungarianMatcher
from unipercept.criterion.set_criterion import num_targets
from unipercept.modeling.outputs import DecoderOutput
from unipercept.structures import (
    ImageBatch,
    Instances,
    RLEMasks,
    box_convert,
    box_iou,
    boxes_to_masks,
    generalized_box_iou,
    normalize_boxes,
)

DEFAULT_WEIGHTS = {
    "loss_class": 2.0,
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
    "loss_iou": 1.0,
    "loss_mask": 5.0,
    "loss_dice": 5.0,
    "loss_proj": 1.0,
    "loss_pairwise": 1.0,
    "loss_embed": 0.25,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _dense(masks: Tensor | RLEMasks) -> Tensor:
    return masks.decode() if isinstance(masks, RLEMasks) else masks


class UniPerceptCriterion(nn.Module):
    """Unweighted losses of :class:`~unipercept.modeling.UniPercept` for a batch.

    Keys: ``loss_class``, ``loss_bbox``, ``loss_giou``, ``loss_iou`` (quality) and, per image,
    either ``loss_mask``/``loss_dice`` (targets with masks) or ``loss_proj``/
    ``loss_pairwise`` (BoxInst, targets with boxes only); ``.aux{l}`` for earlier layers and
    ``.enc`` for proposals. :meth:`embedding_loss` gives ``loss_embed`` for a pair of frames.

    Args:
        matcher: assigns queries to targets (on the retrieval scores and boxes).
        weight_dict: weight of each base loss name (defaults: :data:`DEFAULT_WEIGHTS`).
        mask_points: compute mask losses on this many importance-sampled points per mask
            (Mask Frozen-DETR); None uses every pixel of the mask grid.
        aux_masks: mask losses for every decoder layer, not only the last.
        pairwise_threshold: BoxInst's colour-similarity threshold.
        pixel_mean, pixel_std: the images' normalisation, undone for BoxInst's colours.
    """

    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        weight_dict: Mapping[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        mask_points: int | None = None,
        aux_masks: bool = True,
        pairwise_threshold: float = 0.3,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.weight_dict = dict(weight_dict or DEFAULT_WEIGHTS)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.mask_points = mask_points
        self.aux_masks = aux_masks
        self.pairwise_threshold = pairwise_threshold
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False
        )

    def forward(
        self, outputs: DecoderOutput, targets: Sequence[Instances], images: ImageBatch | None = None
    ) -> dict[str, Tensor]:
        """Args:
        outputs: the model's predictions for B images.
        targets: B ground truths: ``labels`` (rows of the prompt), ``boxes`` (xyxy pixels
            of the input image) and, where available, ``masks``.
        images: the input batch; needed for BoxInst's colour term when some target has
            no masks.
        """
        if len(targets) != outputs.logits.shape[1]:
            raise ValueError(f"got {len(targets)} targets for a batch of {outputs.logits.shape[1]}")
        labels = [t.labels for t in targets]
        boxes = [normalize_boxes(t.boxes, t.image_size) for t in targets]
        normalizer = num_targets(labels, outputs.logits.device)
        similarity = None
        if images is not None and any(t.masks is None for t in targets):
            similarity = self._color_similarity(images, outputs)
        losses: dict[str, Tensor] = {}
        num_layers = outputs.logits.shape[0]
        for layer in range(num_layers):
            suffix = "" if layer == num_layers - 1 else f".aux{layer}"
            matches = self.matcher(outputs.logits[layer], outputs.boxes[layer], labels, boxes)
            with_masks = self.aux_masks or layer == num_layers - 1
            losses.update(
                self._layer_losses(
                    outputs,
                    layer,
                    targets,
                    labels,
                    boxes,
                    matches,
                    normalizer,
                    with_masks,
                    similarity,
                    suffix,
                )
            )
        if outputs.encoder is not None:
            agnostic = [torch.zeros_like(t) for t in labels]
            matches = self.matcher(outputs.encoder.logits, outputs.encoder.boxes, agnostic, boxes)
            losses.update(
                self._box_class_losses(
                    outputs.encoder.logits,
                    outputs.encoder.boxes,
                    agnostic,
                    boxes,
                    matches,
                    normalizer,
                    ".enc",
                )
            )
        return losses

    def _box_class_losses(
        self,
        logits: Tensor,
        predicted: Tensor,
        labels: Sequence[Tensor],
        boxes: Sequence[Tensor],
        matches,
        normalizer: Tensor,
        suffix: str,
    ) -> dict[str, Tensor]:
        device = logits.device
        batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)]).to(
            device
        )
        query_index = torch.cat([q for q, _ in matches]).to(device)
        matched_labels = torch.cat(
            [lab[t.to(lab.device)] for lab, (_, t) in zip(labels, matches, strict=True)]
        )
        matched_boxes = torch.cat(
            [b[t.to(b.device)] for b, (_, t) in zip(boxes, matches, strict=True)]
        )
        one_hot = torch.zeros_like(logits)  # padded prompt rows score -inf: their loss is 0
        one_hot[batch_index, query_index, matched_labels] = 1.0
        source = predicted[batch_index, query_index]  # (M, 4)
        giou = torch.diag(
            generalized_box_iou(
                box_convert(source, "cxcywh", "xyxy"), box_convert(matched_boxes, "cxcywh", "xyxy")
            )
        )
        return {
            f"loss_class{suffix}": sigmoid_focal_loss(
                logits, one_hot, normalizer, self.focal_alpha, self.focal_gamma
            ),
            f"loss_bbox{suffix}": (source - matched_boxes).abs().sum() / normalizer,
            f"loss_giou{suffix}": (1 - giou).sum() / normalizer,
        }

    def _layer_losses(
        self,
        outputs: DecoderOutput,
        layer: int,
        targets: Sequence[Instances],
        labels,
        boxes,
        matches,
        normalizer: Tensor,
        with_masks: bool,
        similarity: Tensor | None,
        suffix: str,
    ) -> dict[str, Tensor]:
        losses = self._box_class_losses(
            outputs.logits[layer], outputs.boxes[layer], labels, boxes, matches, normalizer, suffix
        )
        device = outputs.logits.device
        batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)]).to(
            device
        )
        query_index = torch.cat([q for q, _ in matches]).to(device)
        target_index = [t.to(device) for _, t in matches]
        predicted = box_convert(outputs.boxes[layer][batch_index, query_index], "cxcywh", "xyxy")
        wanted = box_convert(
            torch.cat([b[t] for b, t in zip(boxes, target_index, strict=True)]), "cxcywh", "xyxy"
        )
        quality_target = torch.diag(box_iou(predicted, wanted)).detach()  # (M,)
        if with_masks:
            mask_part, mask_iou = self._mask_losses(
                outputs,
                layer,
                targets,
                batch_index,
                query_index,
                target_index,
                normalizer,
                similarity,
                suffix,
            )
            losses.update(mask_part)
            if mask_iou is not None:
                quality_target = torch.where(torch.isnan(mask_iou), quality_target, mask_iou)
        quality = outputs.quality[layer][batch_index, query_index]  # (M,)
        losses[f"loss_iou{suffix}"] = (
            F.binary_cross_entropy_with_logits(quality, quality_target, reduction="sum")
            / normalizer
        )
        return losses

    def _mask_losses(
        self,
        outputs: DecoderOutput,
        layer: int,
        targets: Sequence[Instances],
        batch_index: Tensor,
        query_index: Tensor,
        target_index: Sequence[Tensor],
        normalizer: Tensor,
        similarity: Tensor | None,
        suffix: str,
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        logits = outputs.mask_logits(layer, batch_index, query_index)  # (M, h, w)
        height, width = logits.shape[-2:]
        stride = outputs.mask_stride
        has_masks = torch.tensor(
            [targets[i].masks is not None for i in batch_index.tolist()],
            dtype=torch.bool,
            device=logits.device,
        )
        losses: dict[str, Tensor] = {}
        mask_iou = torch.full((len(batch_index),), float("nan"), device=logits.device)
        if bool(has_masks.any()):
            wanted = []
            for image, rows in enumerate(target_index):
                if targets[image].masks is None:
                    continue
                dense = _dense(targets[image].masks)[rows].float()  # (T_i, H_img, W_img)
                pad_h, pad_w = height * stride - dense.shape[1], width * stride - dense.shape[2]
                wanted.append(F.pad(dense, (0, pad_w, 0, pad_h)))  # on the padded input grid
            wanted_masks = torch.cat(wanted).to(logits.device)
            chosen = logits[has_masks]
            losses.update(
                {
                    f"{k}{suffix}": v
                    for k, v in mask_losses(
                        chosen, wanted_masks, normalizer, num_points=self.mask_points
                    ).items()
                }
            )
            with torch.no_grad():
                small = (
                    F.interpolate(
                        wanted_masks[:, None],
                        size=(height, width),
                        mode="bilinear",
                        align_corners=False,
                    )[:, 0]
                    >= 0.5
                )
                predicted = chosen >= 0
                inter = (small & predicted).flatten(1).sum(1).float()
                union = (small | predicted).flatten(1).sum(1).float()
                mask_iou[has_masks] = torch.where(union > 0, inter / union.clamp(min=1), 0.0)
        if bool((~has_masks).any()):
            box_masks = []
            for image, rows in enumerate(target_index):
                if targets[image].masks is not None:
                    continue
                box_masks.append(
                    boxes_to_masks(
                        targets[image].boxes[rows].to(logits.device) / stride, (height, width)
                    ).float()
                )
            box_masks_tensor = torch.cat(box_masks)  # (M_b, h, w)
            chosen = logits[~has_masks]
            losses[f"loss_proj{suffix}"] = box_projection_loss(chosen, box_masks_tensor, normalizer)
            if similarity is not None:
                losses[f"loss_pairwise{suffix}"] = pairwise_color_loss(
                    chosen,
                    similarity[batch_index[~has_masks]],
                    box_masks_tensor,
                    threshold=self.pairwise_threshold,
                )
        return losses, mask_iou

    def _color_similarity(self, images: ImageBatch, outputs: DecoderOutput) -> Tensor:
        """(B, 8, h, w) BoxInst colour similarity on the mask grid."""
        rgb = (images.tensor * self.pixel_std + self.pixel_mean).clamp(0, 1)  # (B, 3, H, W)
        stride = outputs.mask_stride
        small = F.avg_pool2d(rgb, kernel_size=stride, stride=stride)  # (B, 3, h, w)
        valid = (
            F.max_pool2d(images.valid[:, None].float(), kernel_size=stride, stride=stride)[:, 0] > 0
        )
        height, width = outputs.mask_features.shape[-2:]
        return color_similarity(small[..., :height, :width], valid[..., :height, :width])

    def embedding_loss(
        self,
        key: DecoderOutput,
        key_targets: Sequence[Instances],
        reference: DecoderOutput,
        reference_targets: Sequence[Instances],
    ) -> dict[str, Tensor]:
        """Contrastive association loss between two frames of the same videos.

        Queries matched (last layer) to objects with the same ``track_ids`` are pulled
        together, others pushed apart (QDTrack / IDOL).
        """
        key_embeddings, key_ids = self._matched_embeddings(key, key_targets)
        ref_embeddings, ref_ids = self._matched_embeddings(reference, reference_targets)
        return {
            "loss_embed": contrastive_embedding_loss(
                key_embeddings, key_ids, ref_embeddings, ref_ids
            )
        }

    def _matched_embeddings(
        self, outputs: DecoderOutput, targets: Sequence[Instances]
    ) -> tuple[Tensor, Tensor]:
        labels = [t.labels for t in targets]
        boxes = [normalize_boxes(t.boxes, t.image_size) for t in targets]
        matches = self.matcher(outputs.logits[-1], outputs.boxes[-1], labels, boxes)
        embeddings, ids = [], []
        for image, ((queries, rows), target) in enumerate(zip(matches, targets, strict=True)):
            if target.track_ids is None:
                raise ValueError(
                    f"targets[{image}] has no track_ids: the embedding loss needs object identities"
                )
            embeddings.append(outputs.embeddings[image, queries.to(outputs.embeddings.device)])
            # Identities are per video: offset them by image so two videos never share one.
            ids.append(
                target.track_ids[rows.to(target.track_ids.device)].to(outputs.embeddings.device)
                + image * (1 << 32)
            )
        return torch.cat(embeddings), torch.cat(ids)
