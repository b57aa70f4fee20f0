"""Training losses: Hungarian matching, DETR's set criterion, and the prompt-driven model's
criterion with mask, BoxInst and association losses, and UNINEXT's losses for fine-tuning its
released models."""

from unipercept.criterion.boxinst import box_projection_loss, color_similarity, pairwise_color_loss
from unipercept.criterion.embedding_loss import contrastive_embedding_loss
from unipercept.criterion.losses import sigmoid_focal_loss
from unipercept.criterion.mask_losses import dice_loss, mask_losses, point_sample
from unipercept.criterion.matcher import HungarianMatcher
from unipercept.criterion.set_criterion import SetCriterion, num_targets, total_loss
from unipercept.criterion.uninext_criterion import UninextCriterion
from unipercept.criterion.unipercept_criterion import UniPerceptCriterion

__all__ = [
    "HungarianMatcher",
    "SetCriterion",
    "UniPerceptCriterion",
    "UninextCriterion",
    "box_projection_loss",
    "color_similarity",
    "contrastive_embedding_loss",
    "dice_loss",
    "mask_losses",
    "num_targets",
    "pairwise_color_loss",
    "point_sample",
    "sigmoid_focal_loss",
    "total_loss",
]
