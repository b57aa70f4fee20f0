"""Vision backbones: the in-house MobileNetV2 and any transformers AutoBackbone."""

from unipercept.modeling.backbone.base import Backbone
from unipercept.modeling.backbone.frozen_bn import FrozenBatchNorm2d, freeze_batch_norm
from unipercept.modeling.backbone.hf_backbone import HFBackbone
from unipercept.modeling.backbone.mobilenet_v2 import MobileNetV2

__all__ = ["Backbone", "FrozenBatchNorm2d", "HFBackbone", "MobileNetV2", "freeze_batch_norm"]
