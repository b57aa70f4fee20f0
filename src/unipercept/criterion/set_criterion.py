"""DETR's set criterion: match predictions to targets, then classification and box losses for
every decoder layer, the two-stage proposals and the denoising queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

from unipercept.criterion.losses import sigmoid_focal_loss
from unipercept.criterion.matcher import HungarianMatcher
from unipercept.modeling.outputs import DetectionOutput
from unipercept.structures import Instances, box_convert, generalized_box_iou, normalize_boxes

Match = tuple[Tensor, Tensor]


def num_targets(labels: Sequence[Tensor], device: torch.device) -> Tensor:
    """Targets in the whole (distributed) batch, at least 1: what DETR losses divide by."""
    count = torch.tensor(float(sum(len(t) for t in labels)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1.0)


def total_loss(losses: Mapping[str, Tensor], weight_dict: Mapping[str, float]) -> Tensor:
    """The weighted sum of ``losses``: each key ``base`` or ``base.suffix`` takes the weight of
    ``base``; keys whose base has no weight are left out."""
    weighted = [
        weight_dict[key.split(".")[0]] * value
        for key, value in losses.items()
        if key.split(".")[0] in weight_dict
    ]
    if not weighted:
        raise ValueError(f"no loss in {sorted(losses)} has a weight in {sorted(weight_dict)}")
    return torch.stack(weighted).sum()


class SetCriterion(nn.Module):
    """Unweighted DETR losses for a batch.

    Returned keys: ``loss_class``, ``loss_bbox``, ``loss_giou`` for the last decoder layer,
    the same with ``.aux{l}`` for earlier layers, ``.enc`` for two-stage proposals (class
    agnostic: every target counts as class 0), and ``.dn{l}`` for denoising queries. Weighting
    happens once, in the trainer, with :func:`total_loss` and :attr:`weight_dict`.

    Args:
        matcher: assigns queries to targets.
        weight_dict: weight of each base loss name.
        focal_alpha, focal_gamma: classification focal loss parameters.
    """

    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        weight_dict: Mapping[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.matcher = matcher
        self.weight_dict = dict(
            weight_dict or {"loss_class": 2.0, "loss_bbox": 5.0, "loss_giou": 2.0}
        )
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(self, outputs: DetectionOutput, targets: Sequence[Instances]) -> dict[str, Tensor]:
        """Args:
            outputs: the detector's predictions for B images.
            targets: B ground truths with ``labels`` and ``boxes`` (xyxy pixels of the image
                of size ``image_size`` the model saw).

        Returns:
            unweighted losses by name.
        """
        if len(targets) != outputs.logits.shape[1]:
            raise ValueError(f"got {len(targets)} targets for a batch of {outputs.logits.shape[1]}")
        labels = [t.labels for t in targets]
        boxes = [normalize_boxes(t.boxes, t.image_size) for t in targets]
        normalizer = num_targets(labels, outputs.logits.device)
        losses: dict[str, Tensor] = {}
        num_layers = outputs.logits.shape[0]
        for layer in range(num_layers):
            suffix = "" if layer == num_layers - 1 else f".aux{layer}"
            logits, predicted = outputs.logits[layer], outputs.boxes[layer]
            matches = self.matcher(logits, predicted, labels, boxes)
            losses.update(
                self._losses(logits, predicted, labels, boxes, matches, normalizer, suffix)
            )
        if outputs.encoder is not None:
            agnostic = [torch.zeros_like(t) for t in labels]
            logits, predicted = outputs.encoder.logits, outputs.encoder.boxes
            matches = self.matcher(logits, predicted, agnostic, boxes)
            losses.update(
                self._losses(logits, predicted, agnostic, boxes, matches, normalizer, ".enc")
            )
        if outputs.denoising is not None:
            dn = outputs.denoising
            matches = [
                (q.cpu(), t.cpu()) for q, t in zip(dn.query_index, dn.target_index, strict=True)
            ]
            # Each object has several denoising copies: normalise by their number.
            copies = max(
                1, sum(len(q) for q in dn.query_index) // max(1, sum(len(t) for t in labels))
            )
            for layer in range(dn.logits.shape[0]):
                losses.update(
                    self._losses(
                        dn.logits[layer],
                        dn.boxes[layer],
                        labels,
                        boxes,
                        matches,
                        normalizer * copies,
                        f".dn{layer}",
                    )
                )
        return losses

    def _losses(
        self,
        logits: Tensor,
        predicted: Tensor,
        labels: Sequence[Tensor],
        boxes: Sequence[Tensor],
        matches: Sequence[Match],
        normalizer: Tensor,
        suffix: str,
    ) -> dict[str, Tensor]:
        batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)])
        query_index = torch.cat([q for q, _ in matches])
        device = logits.device
        batch_index, query_index = batch_index.to(device), query_index.to(device)
        matched_labels = torch.cat(
            [lab[t.to(lab.device)] for lab, (_, t) in zip(labels, matches, strict=True)]
        )
        matched_boxes = torch.cat(
            [b[t.to(b.device)] for b, (_, t) in zip(boxes, matches, strict=True)]
        )
        one_hot = torch.zeros_like(logits)  # (B, Q, K); unmatched queries target "no object"
        one_hot[batch_index, query_index, matched_labels] = 1.0
        loss_class = sigmoid_focal_loss(
            logits, one_hot, normalizer, self.focal_alpha, self.focal_gamma
        )
        source = predicted[batch_index, query_index]  # (M, 4)
        loss_bbox = (source - matched_boxes).abs().sum() / normalizer
        giou = torch.diag(
            generalized_box_iou(
                box_convert(source, "cxcywh", "xyxy"), box_convert(matched_boxes, "cxcywh", "xyxy")
            )
        )
        loss_giou = (1 - giou).sum() / normalizer
        return {
            f"loss_class{suffix}": loss_class,
            f"loss_bbox{suffix}": loss_bbox,
            f"loss_giou{suffix}": loss_giou,
        }
