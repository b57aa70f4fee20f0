"""Prompt encoders: category names and expressions through a text model, annotations through
a 4-channel visual encoder. The model picks one by ``prompt.kind``."""

from unipercept.modeling.prompt.annotation import (
    AnnotationPromptEncoder,
    PriorConv2d,
    add_prior_channel,
)
from unipercept.modeling.prompt.language import CategoryPromptEncoder, ExpressionPromptEncoder
from unipercept.modeling.prompt.template import (
    TemplatePromptEncoder,
    concat_templates,
    crop_template,
    template_embedding,
)
from unipercept.modeling.prompt.text import EncodedText, TextEncoder, offline_text_model_path

__all__ = [
    "AnnotationPromptEncoder",
    "CategoryPromptEncoder",
    "EncodedText",
    "ExpressionPromptEncoder",
    "PriorConv2d",
    "TemplatePromptEncoder",
    "TextEncoder",
    "add_prior_channel",
    "concat_templates",
    "crop_template",
    "offline_text_model_path",
    "template_embedding",
]
