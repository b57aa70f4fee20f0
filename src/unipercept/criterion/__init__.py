"""Training losses: Hungarian matching and DETR's set criterion."""

from unipercept.criterion.losses import sigmoid_focal_loss
from unipercept.criterion.matcher import HungarianMatcher
from unipercept.criterion.set_criterion import SetCriterion, total_loss

__all__ = ["HungarianMatcher", "SetCriterion", "sigmoid_focal_loss", "total_loss"]
