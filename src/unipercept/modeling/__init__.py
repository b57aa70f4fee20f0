"""Neural network parts: backbones, the deformable transformer, heads, and the detector."""

from unipercept.modeling.build import build_deformable_detr, build_unipercept
from unipercept.modeling.deformable_attention import MultiScaleDeformableAttention
from unipercept.modeling.deformable_transformer import (
    DecoderLayer,
    DeformableDecoder,
    DeformableEncoder,
    EncoderLayer,
)
from unipercept.modeling.denoising import DenoisingQueries
from unipercept.modeling.detector import DeformableDETR, detection_heads
from unipercept.modeling.fusion import BiAttentionLayer, BiXAttnFusion
from unipercept.modeling.heads import MLP
from unipercept.modeling.neck import MultiScaleNeck
from unipercept.modeling.outputs import (
    DecoderOutput,
    DecoderStates,
    DenoisingOutput,
    DetectionOutput,
    EncoderProposals,
    MultiScaleFeatures,
    PromptEmbedding,
    Queries,
)
from unipercept.modeling.position_encoding import SinePositionEncoding
from unipercept.modeling.query_selection import StaticQueries, TwoStageQueries
from unipercept.modeling.unipercept import UniPercept
from unipercept.modeling.unipercept_heads import RetrievalHead, UniPerceptHeads

__all__ = [
    "MLP",
    "BiAttentionLayer",
    "BiXAttnFusion",
    "DecoderLayer",
    "DecoderOutput",
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
    "PromptEmbedding",
    "Queries",
    "RetrievalHead",
    "SinePositionEncoding",
    "StaticQueries",
    "TwoStageQueries",
    "UniPercept",
    "UniPerceptHeads",
    "build_deformable_detr",
    "build_unipercept",
    "detection_heads",
]
