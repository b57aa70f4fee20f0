"""UNINEXT's training losses (``SetCriterion`` and ``HungarianMatcherVL`` of
``models/deformable_detr/{deformable_detr,matcher}.py``) for fine-tuning its released models.

- Decoder layers are matched with SimOTA, the encoder's proposals with the Hungarian matcher
  (:mod:`unipercept.criterion.uninext_matching`).
- ``loss_ce``: sigmoid focal loss of every query against every text token (the object's tokens
  are 1 for its queries), over the caption's tokens only; ``loss_bbox``/``loss_giou``: L1 and
  GIoU; ``loss_boxiou``: binary cross-entropy of the IoU head against each matched box's IoU
  (a mean, unweighted in UNINEXT); ``loss_mask``/``loss_dice``: focal (mean per mask) and dice
  on masks at stride 4, targets sampled at every 4th pixel from offset 2. All but
  ``loss_boxiou`` are divided by the number of matched queries (UNINEXT's OTA normaliser).
- Every decoder layer has the same losses (``.aux{l}``); the encoder's proposals have class and
  box losses against a single "object" logit (``STILL_CLS_FOR_ENCODER``) (``.enc``).
- Given a reference frame of the same clips: the re-id losses (``loss_reid``,
  ``loss_reid_aux``) of the key frame's objects against the reference frame's queries (IDOL's
  selection of positives and negatives, ``models/pos_neg_select.py``); the re-id head reads
  detached inputs, so only it learns from them.

Not ported: DINO's denoising queries (``loss_*_dn``; a training aid of UNINEXT's pre-training,
whose absence changes no answer at test time) and BoxInst for box-only data (the mask losses
are left out when the targets have no masks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unipercept.criterion.losses import sigmoid_focal_loss
from unipercept.criterion.mask_losses import dice_loss
from unipercept.criterion.uninext_matching import (
    Match,
    hungarian_match,
    simota_assign,
    simota_matching,
)
from unipercept.modeling.uninext.training import TrainingOutputs
from unipercept.structures import (
    Instances,
    RLEMasks,
    box_convert,
    box_iou,
    generalized_box_iou,
    normalize_boxes,
)

# uninext/config.py: CLASS_WEIGHT 2, L1_WEIGHT 5, GIOU_WEIGHT 2, MASK_WEIGHT 2, DICE_WEIGHT 5,
# REID_WEIGHT 2 (its auxiliary term 1.5 times that, uninext_vid.py); loss_boxiou has no weight
# there, so detectron2 adds it as it is.
UNINEXT_WEIGHTS = {
    "loss_ce": 2.0,
    "loss_bbox": 5.0,
    "loss_giou": 2.0,
    "loss_boxiou": 1.0,
    "loss_mask": 2.0,
    "loss_dice": 5.0,
    "loss_reid": 2.0,
    "loss_reid_aux": 3.0,
}
MASK_STRIDE = 4


def pair_loss(positive_scores: Tensor, negative_scores: Tensor) -> Tensor:
    """IDOL's contrastive loss of one key embedding: ``log(1 + sum_{p,n} exp(s_n - s_p))`` over
    its positive and negative reference scores, computed in log space; 0 without either."""
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return positive_scores.sum() * 0.0 + negative_scores.sum() * 0.0
    return F.softplus(negative_scores.logsumexp(0) + (-positive_scores).logsumexp(0))


def token_focal_loss(
    logits: Tensor, targets: Tensor, token_mask: Tensor | None, alpha: float, gamma: float
) -> Tensor:
    """UNINEXT's ``token_sigmoid_binary_focal_loss``: the focal loss summed over every query
    and the prompt's tokens (``token_mask`` (B, T) bool; None: all)."""
    if token_mask is not None:
        keep = token_mask[:, None, :].expand_as(logits)
        logits, targets = logits[keep], targets[keep]
    return sigmoid_focal_loss(logits, targets, 1.0, alpha, gamma)


def _dense(masks: Tensor | RLEMasks) -> Tensor:
    return masks.decode() if isinstance(masks, RLEMasks) else masks


class UninextCriterion(nn.Module):
    """Unweighted losses of a :class:`~unipercept.modeling.uninext.Uninext` batch (see the
    module docstring); the trainer weights them with :attr:`weight_dict`.

    Args:
        weight_dict: weight of each base loss name (default :data:`UNINEXT_WEIGHTS`).
        focal_alpha, focal_gamma: the focal loss's and costs' parameters.
        cost_class, cost_bbox, cost_giou: the encoder's Hungarian costs (UNINEXT: 2, 5, 2).
        ota: SimOTA for the decoder layers (UNINEXT's ``MODEL.OTA``); False: Hungarian.
    """

    def __init__(
        self,
        *,
        weight_dict: Mapping[str, float] | None = None,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        cost_class: float = 2.0,
        cost_bbox: float = 5.0,
        cost_giou: float = 2.0,
        ota: bool = True,
    ) -> None:
        super().__init__()
        self.weight_dict = dict(weight_dict or UNINEXT_WEIGHTS)
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.costs = {"cost_class": cost_class, "cost_bbox": cost_bbox, "cost_giou": cost_giou}
        self.ota = ota

    def forward(
        self,
        outputs: TrainingOutputs,
        targets: Sequence[Instances],
        positive: Sequence[Tensor],
        reference: TrainingOutputs | None = None,
        reference_targets: Sequence[Instances] | None = None,
    ) -> dict[str, Tensor]:
        """Args:
        outputs: the model's predictions for B images (key frames).
        targets: B ground truths: ``labels`` (rows of the prompt), ``boxes`` (xyxy pixels of
            the input image) and, where every image has them, ``masks``; ``track_ids`` with a
            reference frame.
        positive: per image, (K_b, T) bool: the tokens of each prompt row.
        reference, reference_targets: another frame of each clip (its last layer and re-id
            embeddings) and its ground truth, for the re-id losses; or None.
        """
        if len(targets) != outputs.logits.shape[1]:
            raise ValueError(f"got {len(targets)} targets for a batch of {outputs.logits.shape[1]}")
        device = outputs.logits.device
        # An object whose category has no token (beyond the caption's 256) cannot be asked for.
        rows = [positive[i][t.labels.to(device)] for i, t in enumerate(targets)]  # (T_b, T)
        keep = [r.any(-1) for r in rows]
        targets = [t[k.to(t.labels.device)] for t, k in zip(targets, keep, strict=True)]
        rows = [r[k] for r, k in zip(rows, keep, strict=True)]
        boxes = [normalize_boxes(t.boxes, t.image_size).to(device) for t in targets]
        with_masks = all(t.masks is not None for t in targets)
        losses: dict[str, Tensor] = {}
        for layer in range(outputs.num_layers):
            suffix = "" if layer == outputs.num_layers - 1 else f".aux{layer}"
            logits, predicted = outputs.logits[layer], outputs.boxes[layer]
            if self.ota:
                with torch.no_grad():
                    probability = logits.detach().sigmoid()
                    assigned = [
                        simota_assign(
                            probability[i],
                            predicted[i].detach(),
                            rows[i],
                            boxes[i],
                            alpha=self.focal_alpha,
                            gamma=self.focal_gamma,
                        )
                        for i in range(len(targets))
                    ]
                matches = [(q, t) for q, t, _ in assigned]
                best = [b for _, _, b in assigned]
            else:
                matches = self._hungarian(logits, predicted, rows, boxes)
                best = [q[t.argsort()] for q, t in matches]  # one query per object
            losses.update(
                self._box_class_losses(
                    logits, predicted, outputs.token_mask, rows, boxes, matches, suffix
                )
            )
            losses[f"loss_boxiou{suffix}"] = self._iou_loss(
                outputs.iou_logits[layer], predicted, boxes, matches
            )
            if with_masks:
                losses.update(self._mask_losses(outputs, layer, targets, matches, suffix))
        if reference is not None:
            if reference_targets is None or len(reference_targets) != len(targets):
                raise ValueError("a reference frame needs one ground truth per key frame")
            losses.update(
                self._reid_losses(outputs, best, targets, reference, reference_targets, positive)
            )
        # The encoder: one "object" logit per position, every object's single token.
        objects = [torch.ones(len(b), 1, dtype=torch.bool, device=device) for b in boxes]
        matches = self._hungarian(outputs.enc_logits, outputs.enc_boxes, objects, boxes)
        losses.update(
            self._box_class_losses(
                outputs.enc_logits, outputs.enc_boxes, None, objects, boxes, matches, ".enc"
            )
        )
        return losses

    @torch.no_grad()
    def _hungarian(self, logits, predicted, rows, boxes) -> list[Match]:
        return hungarian_match(
            logits.detach(),
            predicted.detach(),
            rows,
            boxes,
            alpha=self.focal_alpha,
            gamma=self.focal_gamma,
            **self.costs,
        )

    def _box_class_losses(
        self,
        logits: Tensor,
        predicted: Tensor,
        token_mask: Tensor | None,
        rows: Sequence[Tensor],
        boxes: Sequence[Tensor],
        matches: Sequence[Match],
        suffix: str,
    ) -> dict[str, Tensor]:
        device = logits.device
        batch_index, query_index = _indices(matches, device)
        if len(query_index) == 0:  # no object in the batch: UNINEXT's losses are 0
            zero = logits.sum() * 0.0 + predicted.sum() * 0.0
            return {
                f"loss_ce{suffix}": zero,
                f"loss_bbox{suffix}": zero,
                f"loss_giou{suffix}": zero,
            }
        normalizer = float(len(query_index))  # UNINEXT's OTA: the matched queries
        targets = torch.zeros_like(logits)  # (B, Q, T)
        targets[batch_index, query_index] = torch.cat(
            [r[t.to(r.device)] for r, (_, t) in zip(rows, matches, strict=True)]
        ).to(logits.dtype)
        source = predicted[batch_index, query_index]  # (M, 4)
        wanted = torch.cat([b[t.to(b.device)] for b, (_, t) in zip(boxes, matches, strict=True)])
        giou = torch.diag(
            generalized_box_iou(
                box_convert(source, "cxcywh", "xyxy"), box_convert(wanted, "cxcywh", "xyxy")
            )
        )
        return {
            f"loss_ce{suffix}": token_focal_loss(
                logits, targets, token_mask, self.focal_alpha, self.focal_gamma
            )
            / normalizer,
            f"loss_bbox{suffix}": (source - wanted).abs().sum() / normalizer,
            f"loss_giou{suffix}": (1 - giou).sum() / normalizer,
        }

    def _iou_loss(
        self, iou_logits: Tensor, predicted: Tensor, boxes: Sequence[Tensor], matches
    ) -> Tensor:
        batch_index, query_index = _indices(matches, iou_logits.device)
        if len(query_index) == 0:
            return iou_logits.sum() * 0.0
        source = predicted[batch_index, query_index]
        wanted = torch.cat([b[t.to(b.device)] for b, (_, t) in zip(boxes, matches, strict=True)])
        with torch.no_grad():
            quality = torch.diag(
                box_iou(
                    box_convert(source, "cxcywh", "xyxy"), box_convert(wanted, "cxcywh", "xyxy")
                )
            )
        return F.binary_cross_entropy_with_logits(
            iou_logits[batch_index, query_index, 0], quality.to(iou_logits.dtype)
        )

    def _mask_losses(
        self,
        outputs: TrainingOutputs,
        layer: int,
        targets: Sequence[Instances],
        matches: Sequence[Match],
        suffix: str,
    ) -> dict[str, Tensor]:
        predicted, wanted = [], []
        for image, (queries, rows) in enumerate(matches):
            if len(queries) == 0:
                continue
            logits = outputs.mask_logits(layer, image, queries.to(outputs.logits.device))
            height, width = logits.shape[-2:]
            dense = _dense(targets[image].masks)[rows.to(targets[image].labels.device)].float()
            # On the padded input grid, then every 4th pixel from offset 2 (get_target_masks).
            padded = F.pad(
                dense,
                (
                    0,
                    width * MASK_STRIDE - dense.shape[-1],
                    0,
                    height * MASK_STRIDE - dense.shape[-2],
                ),
            )
            start = MASK_STRIDE // 2
            wanted.append(padded[:, start::MASK_STRIDE, start::MASK_STRIDE].to(logits.device))
            predicted.append(logits)
        if not predicted:
            zero = outputs.logits.sum() * 0.0
            return {f"loss_mask{suffix}": zero, f"loss_dice{suffix}": zero}
        logits = torch.cat(predicted).flatten(1)  # (M, h*w)
        target = torch.cat(wanted).flatten(1).to(logits.dtype)
        normalizer = float(len(logits))
        # UNINEXT's mask focal loss averages over pixels, then sums over masks.
        focal = sigmoid_focal_loss(logits, target, logits.shape[1], self.focal_alpha)
        return {
            f"loss_mask{suffix}": focal / normalizer,
            f"loss_dice{suffix}": dice_loss(logits, target, normalizer),
        }

    def _reid_losses(
        self,
        key: TrainingOutputs,
        best: Sequence[Tensor],
        targets: Sequence[Instances],
        reference: TrainingOutputs,
        reference_targets: Sequence[Instances],
        positive: Sequence[Tensor],
    ) -> dict[str, Tensor]:
        """UNINEXT's (IDOL's) association losses (``select_pos_neg``, ``loss_reid``).

        Each key-frame object present in the reference frame is represented by its cheapest
        query's embedding. In the reference frame, SimOTA on its last layer gives the object's
        positives (10 candidates) and, with 100 candidates, the queries that may overlap it;
        the rest are negatives. ``loss_reid``: :func:`pair_loss` of the dot products;
        ``loss_reid_aux``: the squared error of the cosine similarities to 1 (positives) and 0
        (up to ten negatives per positive, drawn at random). Both are averaged over objects.
        """
        if key.embeddings is None or reference.embeddings is None:
            raise ValueError("the re-id losses need both frames' embeddings")
        device = key.embeddings.device
        contrastive, auxiliary = [], []
        probability = reference.logits[-1].detach().sigmoid()
        for image, (target, ref_target) in enumerate(zip(targets, reference_targets, strict=True)):
            if target.track_ids is None or ref_target.track_ids is None:
                raise ValueError(
                    f"targets[{image}]: the re-id losses need track_ids in both frames"
                )
            where = {int(t): j for j, t in enumerate(ref_target.track_ids.tolist())}
            pairs = [
                (i, where[int(t)])
                for i, t in enumerate(target.track_ids.tolist())
                if int(t) in where
            ]
            if not pairs:
                continue
            present = ref_target[torch.tensor([j for _, j in pairs])]
            rows = positive[image][present.labels.to(device)]
            wanted = normalize_boxes(present.boxes, present.image_size).to(device)
            boxes = reference.boxes[-1][image].detach()
            with torch.no_grad():
                near, _ = simota_matching(probability[image], boxes, rows, wanted, candidates=10)
                wide, _ = simota_matching(probability[image], boxes, rows, wanted, candidates=100)
            embeddings = reference.embeddings[image]  # (Q, E)
            for column, (row, _) in enumerate(pairs):
                anchor = key.embeddings[image, best[image][row]]  # (E,)
                positives = embeddings[(near[:, column] > 0).to(device)]
                negatives = embeddings[(wide[:, column] == 0).to(device)]
                contrastive.append(pair_loss(positives @ anchor, negatives @ anchor))
                count = min(len(negatives), 10 * len(positives) if len(positives) else 10)
                sampled = negatives[torch.randperm(len(negatives))[:count].to(device)]
                cosine = F.normalize(torch.cat([positives, sampled]).float(), dim=1) @ (
                    F.normalize(anchor.float(), dim=0)
                )
                labels = torch.cat([cosine.new_ones(len(positives)), cosine.new_zeros(count)])
                auxiliary.append(((cosine - labels) ** 2).mean())
        if not contrastive:
            zero = key.embeddings.sum() * 0.0 + reference.embeddings.sum() * 0.0
            return {"loss_reid": zero, "loss_reid_aux": zero}
        return {
            "loss_reid": torch.stack(contrastive).sum() / len(contrastive),
            "loss_reid_aux": torch.stack(auxiliary).sum() / len(auxiliary),
        }


def _indices(matches: Sequence[Match], device: torch.device) -> tuple[Tensor, Tensor]:
    batch_index = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(matches)])
    query_index = torch.cat([q for q, _ in matches])
    return batch_index.to(device), query_index.to(device)
