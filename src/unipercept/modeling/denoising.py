"""Contrastive denoising queries (DN-DETR, DINO) for training.

Each ground-truth object enters the decoder a few extra times as a query built from a noised
copy of its box and (sometimes flipped) label. Positive copies stay close to the box and must
reconstruct it; negative copies are pushed further out and must predict "no object". An
attention mask keeps the matching queries from seeing any denoising query and the groups from
seeing each other, so nothing leaks into the real predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from unipercept.modeling.deformable_transformer import inverse_sigmoid
from unipercept.modeling.outputs import Queries
from unipercept.modeling.position_encoding import box_sine_encoding
from unipercept.structures import box_convert


class DenoisingQueries(nn.Module):
    """Builds the denoising queries of a batch and the mask that isolates them.

    Args:
        num_classes: K; labels embed through a table of K rows.
        hidden_dim: model width C.
        num_groups: noised copies (each a positive and a negative) of every object.
        label_noise_ratio: probability that a positive copy's label is replaced at random.
        box_noise_scale: noise on each box side, as a fraction of the box's half size.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        hidden_dim: int = 256,
        num_groups: int = 5,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_groups = num_groups
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.label_embed = nn.Embedding(num_classes, hidden_dim)
        self.position_proj = nn.Linear(2 * hidden_dim, hidden_dim)

    def forward(
        self, queries: Queries, labels: Sequence[Tensor], boxes: Sequence[Tensor]
    ) -> tuple[Queries, int, list[Tensor], list[Tensor]]:
        """Prepends denoising queries to ``queries``.

        Args:
            queries: the matching queries (B, Q, ...).
            labels: per image, (T_b,) int64 target classes.
            boxes: per image, (T_b, 4) normalised cxcywh target boxes.

        Returns:
            the joined queries (denoising first) with their attention mask, the number D of
            denoising queries, and per image the indices of the positive denoising queries and
            of the targets they reconstruct.
        """
        batch, _, width = queries.content.shape
        device = queries.content.device
        largest = max((len(t) for t in labels), default=0)
        if largest == 0:
            empty = [torch.zeros(0, dtype=torch.long, device=device) for _ in range(batch)]
            return queries, 0, empty, list(empty)
        groups = self.num_groups
        slots = 2 * largest  # per group: positives then negatives, padded to the largest image
        count = groups * slots
        content = queries.content.new_zeros((batch, count, width))
        reference = queries.content.new_full((batch, count, 4), 0.5)
        query_index, target_index = [], []
        for image, (image_labels, image_boxes) in enumerate(zip(labels, boxes, strict=True)):
            num = len(image_labels)
            if num == 0:
                query_index.append(torch.zeros(0, dtype=torch.long, device=device))
                target_index.append(torch.zeros(0, dtype=torch.long, device=device))
                continue
            targets = torch.arange(num, device=device).repeat(groups)  # (G*T,)
            positive_slot = torch.arange(groups, device=device).repeat_interleave(
                num
            ) * slots + torch.arange(num, device=device).repeat(groups)  # (G*T,)
            noisy_labels = self._noise_labels(image_labels[targets])
            positive_boxes = self._noise_boxes(image_boxes[targets], negative=False)
            negative_boxes = self._noise_boxes(image_boxes[targets], negative=True)
            slot = torch.cat([positive_slot, positive_slot + largest])  # (2*G*T,)
            content[image, slot] = self.label_embed(torch.cat([noisy_labels, noisy_labels]))
            reference[image, slot] = torch.cat([positive_boxes, negative_boxes])
            query_index.append(positive_slot)
            target_index.append(targets)
        position = self.position_proj(box_sine_encoding(inverse_sigmoid(reference), width // 2))
        total = count + queries.content.shape[1]
        blocked = torch.zeros((total, total), dtype=torch.bool, device=device)
        blocked[count:, :count] = True  # matching queries never see denoising queries
        for group in range(groups):  # nor does a group see the others
            begin, end = group * slots, (group + 1) * slots
            blocked[begin:end, :begin] = True
            blocked[begin:end, end:count] = True
        reference_points = queries.reference_points
        if reference_points.shape[-1] == 2:
            reference = reference[..., :2]
        joined = Queries(
            content=torch.cat([content, queries.content], 1),
            position=torch.cat([position, queries.position], 1),
            reference_points=torch.cat([reference, reference_points], 1),
            self_attention_mask=blocked,
        )
        return joined, count, query_index, target_index

    def _noise_labels(self, labels: Tensor) -> Tensor:
        # Half the ratio: a flipped label may land on the right class again, as in DN-DETR.
        flip = torch.rand(labels.shape, device=labels.device) < self.label_noise_ratio * 0.5
        random_labels = torch.randint_like(labels, 0, self.num_classes)
        return torch.where(flip, random_labels, labels)

    def _noise_boxes(self, boxes: Tensor, *, negative: bool) -> Tensor:
        """Moves each side of (N, 4) cxcywh boxes by up to half the box size times the noise
        scale; negatives move between one and two times that."""
        if self.box_noise_scale <= 0:
            return boxes
        corners = box_convert(boxes, "cxcywh", "xyxy")
        half = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:] / 2], 1)  # (N, 4)
        magnitude = torch.rand_like(boxes) + (1.0 if negative else 0.0)
        sign = torch.randint_like(boxes, 0, 2) * 2 - 1
        corners = (corners + sign * magnitude * half * self.box_noise_scale).clamp(0.0, 1.0)
        return box_convert(corners, "xyxy", "cxcywh")
