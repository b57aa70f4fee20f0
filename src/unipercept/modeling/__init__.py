"""Neural network parts: backbones, the deformable transformer, heads, and the detector."""

from unipercept.modeling.build import build_deformable_detr
from unipercept.modeling.deformable_attention import MultiScaleDeformableAttention
from unipercept.modeling.deformable_transformer import (
    DecoderLayer,
    DeformableDecoder,
    DeformableEncoder,
    EncoderLayer,
)
from unipercept.modeling.denoising import DenoisingQueries
from unipercept.modeling.detector import DeformableDETR, detection_heads
from unipercept.modeling.heads import MLP
from unipercept.modeling.neck import MultiScaleNeck
from unipercept.modeling.outputs import (
    DecoderStates,
    DenoisingOutput,
    DetectionOutput,
    EncoderProposals,
    MultiScaleFeatures,
    Queries,
)
from unipercept.modeling.position_encoding import SinePositionEncoding
from unipercept.modeling.query_selection import StaticQueries, TwoStageQueries

__all__ = [
    "MLP",
    "DecoderLayer",
    "DecoderStates",
    "DeformableDETR",
    "DeformableDecoder",
    "DeformableEncoder",
    "DenoisingOutput",
    "DenoisingQueries",
    "DetectionOutput",
    "EncoderLayer",
    "EncoderProposals",
    "MultiScaleDeformableAttention",
    "MultiScaleFeatures",
    "MultiScaleNeck",
    "Queries",
    "SinePositionEncoding",
    "StaticQueries",
    "TwoStageQueries",
    "build_deformable_detr",
    "detection_heads",
]
