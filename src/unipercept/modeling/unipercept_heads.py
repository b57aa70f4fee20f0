"""The prompt-driven model's heads: retrieval score, box, quality, masks, embeddings."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from unipercept.modeling.heads import MLP
from unipercept.modeling.mask_head import MaskBranch, dynamic_mask_params


class RetrievalHead(nn.Module):
    """Scores every query against every prompt row: S = F_ins . W^T / sqrt(C) + b.

    Args:
        hidden_dim: width C.
        prior_probability: the bias starts so that every score is about this probability
            (focal loss's initialisation).
    """

    def __init__(self, *, hidden_dim: int, prior_probability: float = 0.01) -> None:
        super().__init__()
        self.projection = nn.Linear(hidden_dim, hidden_dim)
        self.bias = nn.Parameter(
            torch.tensor(-math.log((1 - prior_probability) / prior_probability))
        )
        self.scale = hidden_dim**-0.5

    def forward(self, hidden: Tensor, classes: Tensor) -> Tensor:
        """(B, Q, C) instance features and (B, K, C) prompt rows -> (B, Q, K) logits."""
        return self.projection(hidden) @ classes.transpose(1, 2) * self.scale + self.bias


def _per_layer(module: nn.Module, num_layers: int, independent: bool) -> nn.ModuleList:
    if independent:
        return nn.ModuleList(copy.deepcopy(module) for _ in range(num_layers))
    return nn.ModuleList([module] * num_layers)


class UniPerceptHeads(nn.Module):
    """All heads of the prompt-driven model.

    Retrieval, box and quality heads exist per decoder layer (independent copies with box
    refinement, one shared set otherwise, as Deformable DETR); the mask controller and the
    embedding head are shared.

    Args:
        hidden_dim: width C.
        num_layers: decoder layers.
        box_refine: per-layer independent heads, and box heads that refine references.
        mask_branch: builds the mask features.
        embedding_dim: width of the association embeddings.
    """

    def __init__(
        self,
        *,
        hidden_dim: int,
        num_layers: int,
        box_refine: bool,
        mask_branch: MaskBranch,
        embedding_dim: int = 256,
        mask_hidden: int = 8,
    ) -> None:
        super().__init__()
        box_head = MLP(input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=4, num_layers=3)
        nn.init.constant_(box_head.layers[-1].weight, 0.0)
        nn.init.constant_(box_head.layers[-1].bias, 0.0)
        if box_refine:
            nn.init.constant_(box_head.layers[-1].bias[2:], -2.0)
        self.retrieval = _per_layer(RetrievalHead(hidden_dim=hidden_dim), num_layers, box_refine)
        self.box = _per_layer(box_head, num_layers, box_refine)
        self.quality = _per_layer(nn.Linear(hidden_dim, 1), num_layers, box_refine)
        self.mask_branch = mask_branch
        self.mask_hidden = mask_hidden
        self.controller = nn.Linear(
            hidden_dim, dynamic_mask_params(mask_branch.mask_dim, mask_hidden)
        )
        self.embedding = MLP(
            input_dim=hidden_dim, hidden_dim=hidden_dim, output_dim=embedding_dim, num_layers=2
        )

    def mask_branch_parameters(self) -> list[nn.Parameter]:
        """What Mask Frozen-DETR trains: the mask branch, the controller, the quality heads."""
        modules = [self.mask_branch, self.controller, *self.quality]
        seen: dict[int, nn.Parameter] = {}
        for module in modules:
            for parameter in module.parameters():
                seen[id(parameter)] = parameter
        return list(seen.values())
