"""Where the decoder's queries come from: learned embeddings, or the encoder's best proposals.

- :class:`StaticQueries`: Deformable DETR's learned query embeddings, each with a learned
  reference point.
- :class:`TwoStageQueries`: every encoder position proposes a box; the top-scoring ones become
  the queries' reference boxes (Deformable DETR's two-stage variant). With ``mixed=True`` the
  content of the queries stays learned and only their positions come from the proposals (DINO's
  mixed query selection).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unipercept.modeling.heads import in_float32
from unipercept.modeling.outputs import EncoderProposals, MultiScaleFeatures, Queries
from unipercept.modeling.position_encoding import box_sine_encoding


class StaticQueries(nn.Module):
    """``num_queries`` learned (position, content) pairs; reference points are predicted from
    the position part."""

    def __init__(self, *, num_queries: int = 300, hidden_dim: int = 256) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.query_embed = nn.Embedding(num_queries, 2 * hidden_dim)
        self.reference_points = nn.Linear(hidden_dim, 2)
        nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
        nn.init.constant_(self.reference_points.bias, 0.0)

    def forward(self, memory: Tensor, features: MultiScaleFeatures) -> tuple[Queries, None]:
        batch = memory.shape[0]
        position, content = torch.split(
            self.query_embed.weight, self.hidden_dim, dim=1
        )  # (Q, C) each
        position = position.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, C)
        content = content.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, C)
        return Queries(
            content=content,
            position=position,
            reference_points=in_float32(self.reference_points, position).sigmoid(),
        ), None


def encoder_proposals(memory: Tensor, features: MultiScaleFeatures) -> tuple[Tensor, Tensor]:
    """A default box for every encoder position, and which positions may propose.

    Each position proposes a box centred on its pixel, of size 0.05 * 2^level of the image.

    Returns:
        box_logits: (B, S, 4) proposals as logits (inverse sigmoid of cxcywh), +inf where
            unusable (padding, or too close to the border).
        usable: (B, S, 1) bool.
    """
    batch = memory.shape[0]
    proposals = []
    start = 0
    for level, (height, width) in enumerate(features.shapes):
        valid = features.valid[:, start : start + height * width].view(batch, height, width)
        valid_height = valid[:, :, 0].sum(1)  # (B,)
        valid_width = valid[:, 0, :].sum(1)  # (B,)
        grid_y, grid_x = torch.meshgrid(
            torch.linspace(0, height - 1, height, dtype=memory.dtype, device=memory.device),
            torch.linspace(0, width - 1, width, dtype=memory.dtype, device=memory.device),
            indexing="ij",
        )
        grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)  # (H, W, 2)
        scale = torch.cat([valid_width.unsqueeze(-1), valid_height.unsqueeze(-1)], 1).view(
            batch, 1, 1, 2
        )
        grid = (grid.unsqueeze(0).expand(batch, -1, -1, -1) + 0.5) / scale  # (B, H, W, 2)
        size = torch.ones_like(grid) * 0.05 * (2.0**level)
        proposals.append(torch.cat((grid, size), -1).view(batch, -1, 4))  # (B, HW, 4)
        start += height * width
    boxes = torch.cat(proposals, 1)  # (B, S, 4)
    usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1, keepdim=True)  # (B, S, 1)
    box_logits = torch.log(boxes / (1 - boxes))
    box_logits = box_logits.masked_fill(~features.valid.unsqueeze(-1), float("inf"))
    box_logits = box_logits.masked_fill(~usable, float("inf"))
    return box_logits, usable & features.valid.unsqueeze(-1)


class TwoStageQueries(nn.Module):
    """Queries placed on the encoder's top-``num_queries`` proposals.

    Args:
        num_queries: proposals kept.
        hidden_dim: model width C.
        class_head: (B, S, C) -> (B, S, K) scores of each position; the first is the
            objectness that ranks proposals.
        box_head: (B, S, C) -> (B, S, 4) refinement of each proposal's box logits.
        mixed: DINO's mixed query selection: learned content, positions from proposals.
    """

    def __init__(
        self,
        *,
        num_queries: int = 300,
        hidden_dim: int = 256,
        class_head: nn.Module,
        box_head: nn.Module,
        mixed: bool = False,
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.mixed = mixed
        self.class_head = class_head
        self.box_head = box_head
        self.output_proj = nn.Linear(hidden_dim, hidden_dim)
        self.output_norm = nn.LayerNorm(hidden_dim)
        self.position_proj = nn.Linear(2 * hidden_dim, 2 * hidden_dim)
        self.position_norm = nn.LayerNorm(2 * hidden_dim)
        self.content = nn.Embedding(num_queries, hidden_dim) if mixed else None

    def forward(
        self, memory: Tensor, features: MultiScaleFeatures
    ) -> tuple[Queries, EncoderProposals]:
        # In float32 under autocast: the ranking picks among nearly tied proposals, and their
        # boxes become the decoder's reference points.
        return in_float32(self._select, memory, features)

    def _select(
        self, memory: Tensor, features: MultiScaleFeatures
    ) -> tuple[Queries, EncoderProposals]:
        box_logits, usable = encoder_proposals(memory, features)
        # Unusable positions get a zero state, so their scores are the heads' biases.
        states = self.output_norm(self.output_proj(memory.masked_fill(~usable, 0.0)))  # (B, S, C)
        logits = self.class_head(states)  # (B, S, K)
        coord_logits = self.box_head(states) + box_logits  # (B, S, 4)
        num_selected = min(self.num_queries, coord_logits.shape[1])
        top = torch.topk(logits[..., 0], num_selected, dim=1)[1]  # (B, Q)
        selected = torch.gather(
            coord_logits, 1, top.unsqueeze(-1).repeat(1, 1, 4)
        ).detach()  # (B, Q, 4)
        embedded = self.position_norm(
            self.position_proj(box_sine_encoding(selected, self.hidden_dim // 2))
        )
        position, content = torch.split(embedded, self.hidden_dim, dim=2)  # (B, Q, C) each
        if self.content is not None:
            content = (
                self.content.weight[:num_selected].unsqueeze(0).expand(memory.shape[0], -1, -1)
            )
        queries = Queries(content=content, position=position, reference_points=selected.sigmoid())
        return queries, EncoderProposals(logits=logits, boxes=coord_logits.sigmoid())
