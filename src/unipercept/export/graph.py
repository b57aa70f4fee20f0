"""What :mod:`unipercept.export.onnx` traces: the image model with one prompt built in.

The prompt is encoded once in PyTorch (the tokenizer and text encoder stay behind) and its
embedding becomes constant buffers of :class:`PromptedImageModel`, whose only inputs are a
normalised image and its valid-pixel mask. The outputs are the raw per-query predictions of
the last decoder layer; turning them into results (top-k, thresholds, suppression, resizing)
stays in Python (:mod:`unipercept.export.runtime`), as for ``Predictor.predict``.

Only the image tasks (det, insseg, rec, res) can be exported: :data:`NOT_EXPORTABLE` says for
each video task why.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from unipercept.modeling.mask_head import dynamic_mask_logits
from unipercept.modeling.outputs import PromptEmbedding
from unipercept.modeling.unipercept import UniPercept
from unipercept.ops.ms_deform_attn import FORCE_PYTORCH_ENV
from unipercept.structures import ImageBatch
from unipercept.tasks import TASKS, ImageTask

#: Bumped when inputs, outputs or metadata keys change meaning.
FORMAT_VERSION = 1
#: Prefix of the metadata keys written into the ONNX file and the .pt2 archive.
METADATA_PREFIX = "unipercept."
#: Input heights and widths must be multiples of the coarsest backbone stride (as the
#: preprocessor pads them).
SIZE_DIVISIBILITY = 32
INPUT_NAMES = ("image", "valid")
BOX_OUTPUTS = ("logits", "quality", "scores", "boxes", "embeddings")
MASK_OUTPUT = "mask_logits"
#: The confidence exported as ``scores`` weighs class probability and predicted IoU as the
#: image tasks do by default (their ``quality_weight``).
SCORE_QUALITY_WEIGHT = 0.5

_TRACKER = (
    "a tracker (QDTrack, IDOL, ByteTrack or optical-flow mask IoU) that keeps tracks, "
    "embeddings and memory from frame to frame and matches them in Python loops (track birth, "
    "matching and death vary in number from frame to frame)"
)
#: Why each video task cannot become one graph, and what to export instead.
NOT_EXPORTABLE = {
    "sot": "its prompt is an annotated box in the first frame, encoded by the annotation "
    "encoder, and the session re-encodes the target's template from later frames "
    "(AnnotationSession), so the prompt changes while the video runs",
    "vos": "its prompt is an annotated mask in the first frame, encoded by the annotation "
    "encoder, and the session re-encodes each object's template from later frames "
    "(AnnotationSession), so the prompt changes while the video runs",
    "mot": f"its track ids come from {_TRACKER}; export det, whose embeddings output feeds "
    "unipercept.tracking",
    "mots": f"its track ids come from {_TRACKER}; export insseg, whose embeddings output feeds "
    "unipercept.tracking",
    "vis": f"its tracks come from {_TRACKER}, and each track's category is voted over the "
    "whole video when it ends (VideoSummary); export insseg, whose embeddings output feeds "
    "unipercept.tracking",
    "rvos": "its optional whole-video vote follows candidate trajectories with a tracker and "
    "picks one when the video ends (ReferringSession.close); without the vote each frame is "
    "res, so export res",
}


def check_task(task: object) -> type[ImageTask]:
    """The image task class ``task`` names.

    Raises:
        ValueError: an unknown name, or a video task (saying why it has no graph).
    """
    if isinstance(task, str) and task in NOT_EXPORTABLE:
        raise ValueError(
            f"task {task!r} cannot be exported as one graph: {NOT_EXPORTABLE[task]}. Only the "
            "per-frame detector exports (det, insseg, rec, res); the video logic stays in "
            "Python around it"
        )
    exportable = sorted(name for name, cls in TASKS.items() if issubclass(cls, ImageTask))
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the exportable tasks are {exportable}")
    return TASKS[task]  # type: ignore[return-value]


def check_size(height: object, width: object) -> tuple[int, int]:
    """``(height, width)`` as positive multiples of :data:`SIZE_DIVISIBILITY`.

    Raises:
        ValueError: naming the value and the nearest allowed sizes.
    """
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer (pixels), got {value!r}")
        if value % SIZE_DIVISIBILITY:
            low = value // SIZE_DIVISIBILITY * SIZE_DIVISIBILITY
            high = low + SIZE_DIVISIBILITY
            nearest = f"{low} or {high}" if low else str(high)
            raise ValueError(
                f"{name} must be a multiple of {SIZE_DIVISIBILITY} (the backbone's coarsest "
                f"stride; images are padded to it), got {value}: use {nearest}"
            )
    return height, width  # type: ignore[return-value]


@dataclass(frozen=True)
class ExportMetadata:
    """What a consumer of the graph needs besides the graph: stored as string key-value pairs
    (ONNX ``metadata_props``, an extra file of the .pt2 archive).

    Attributes:
        task: det, insseg, rec or res.
        prompt: the prompt as given (``"person. car"`` or an expression).
        labels: what each column of ``logits`` stands for: the category names in order, or the
            expression (one column).
        height, width: the input size (the padded canvas).
        pixel_mean, pixel_std: RGB normalisation of [0, 1] pixels the image input expects.
        mask_stride: input pixels per ``mask_logits`` pixel; None without masks.
        num_queries: Q, the number of per-query predictions.
        outputs: the graph's output names, in order.
    """

    task: str
    prompt: str
    labels: tuple[str, ...]
    height: int
    width: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    mask_stride: int | None
    num_queries: int
    outputs: tuple[str, ...]
    format_version: int = FORMAT_VERSION
    library_version: str = ""

    def to_strings(self) -> dict[str, str]:
        """``{"unipercept.task": "det", ...}``, every value JSON-encoded."""
        return {METADATA_PREFIX + key: json.dumps(value) for key, value in asdict(self).items()}

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> ExportMetadata:
        """Reads :meth:`to_strings`' pairs back (other keys are ignored).

        Raises:
            ValueError: a graph not written by this exporter, or by a newer format.
        """
        fields: dict[str, Any] = {}
        for key, value in values.items():
            if key.startswith(METADATA_PREFIX):
                fields[key[len(METADATA_PREFIX) :]] = json.loads(value)
        if "format_version" not in fields:
            raise ValueError(
                "the graph carries no unipercept metadata: it was not written by "
                "unipercept.export.onnx"
            )
        if fields["format_version"] > FORMAT_VERSION:
            raise ValueError(
                f"the graph has export format {fields['format_version']}; this unipercept "
                f"reads up to {FORMAT_VERSION} (upgrade unipercept)"
            )
        for key in ("labels", "pixel_mean", "pixel_std", "outputs"):
            fields[key] = tuple(fields[key])
        return cls(**fields)


def _image_part(model: UniPercept) -> UniPercept:
    """A view of ``model`` without its prompt encoders (they run before export, not in the
    graph), sharing every other module and parameter."""
    view = copy.copy(model)
    modules = dict(model._modules)
    modules["prompt_encoders"] = nn.ModuleDict()
    object.__setattr__(view, "_modules", modules)
    return view


class PromptedImageModel(nn.Module):
    """The model for one prompt: normalised image in, raw per-query predictions out.

    Args:
        model: a UniPercept model (its image part is used; nothing is copied).
        embedding: the encoded prompt (batch 1), stored as buffers.
        with_masks: also return each query's mask logits.
    """

    def __init__(self, model: UniPercept, embedding: PromptEmbedding, *, with_masks: bool) -> None:
        super().__init__()
        if embedding.tokens.shape[0] != 1:
            raise ValueError(f"one prompt is built in, got {embedding.tokens.shape[0]}")
        self.model = _image_part(model)
        self.with_masks = with_masks
        self.register_buffer("prompt_tokens", embedding.tokens.detach().clone())
        self.register_buffer("prompt_valid", embedding.valid.clone())
        self.register_buffer("prompt_pooling", embedding.pooling.detach().clone())
        self.register_buffer("prompt_class_valid", embedding.class_valid.clone())
        self.prompt_kind = embedding.kind

    @property
    def output_names(self) -> tuple[str, ...]:
        return (*BOX_OUTPUTS, MASK_OUTPUT) if self.with_masks else BOX_OUTPUTS

    def forward(self, image: Tensor, valid: Tensor) -> tuple[Tensor, ...]:
        """Args:
            image: (1, 3, H, W) float32, normalised, padded at the bottom and right.
            valid: (1, H, W) bool, True on image pixels (all True without padding).

        Returns:
            logits (1, Q, K): retrieval logits against the K prompt rows;
            quality (1, Q): predicted-IoU logits;
            scores (1, Q, K): sigmoid(logits)^0.5 * sigmoid(quality)^0.5, the tasks' default
            confidence;
            boxes (1, Q, 4): cxcywh normalised by the valid image's width and height;
            embeddings (1, Q, E): association embeddings (what the trackers match);
            with masks, mask_logits (1, Q, H / s, W / s) on the padded canvas at the mask
            stride s.
        """
        height, width = image.shape[-2:]
        batch = ImageBatch(
            tensor=image,
            valid=valid,
            image_sizes=((height, width),),
            original_sizes=((height, width),),
        )
        embedding = PromptEmbedding(
            tokens=self.prompt_tokens,
            valid=self.prompt_valid,
            pooling=self.prompt_pooling,
            class_valid=self.prompt_class_valid,
            kind=self.prompt_kind,
        )
        output = self.model(batch, embedding)
        logits, quality, boxes = output.logits[-1], output.quality[-1], output.boxes[-1]
        weight = SCORE_QUALITY_WEIGHT
        scores = logits.sigmoid() ** (1 - weight) * quality.sigmoid()[..., None] ** weight
        results = (logits, quality, scores, boxes, output.embeddings)
        if not self.with_masks:
            return results
        # The image's size inside the padded canvas, read from the mask so that one graph
        # serves any image letterboxed into it (ImageBatch's sizes are the canvas's here).
        image_sizes = torch.stack((valid[:, :, 0].sum(1), valid[:, 0, :].sum(1)), -1)  # (1, 2)
        num_queries = logits.shape[1]
        masks = dynamic_mask_logits(
            output.mask_features,
            torch.zeros(num_queries, dtype=torch.long, device=image.device),
            output.mask_kernels[-1][0],
            boxes[0, :, :2],
            image_sizes,
            output.mask_stride,
            hidden=self.model.heads.mask_hidden,
        )  # (Q, h, w)
        return (*results, masks[None])


@contextlib.contextmanager
def pytorch_deformable_attention() -> Iterator[None]:
    """Deformable attention takes the PyTorch reference (``grid_sample``) inside the block,
    not the compiled op, which ONNX cannot express. Sets ``UNIPERCEPT_MSDA_FORCE_PYTORCH``
    for the process while tracing and restores it after; the normal path is untouched."""
    previous = os.environ.get(FORCE_PYTORCH_ENV)
    os.environ[FORCE_PYTORCH_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_PYTORCH_ENV, None)
        else:
            os.environ[FORCE_PYTORCH_ENV] = previous


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (the example inputs go there)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def example_inputs(
    height: int, width: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """A (1, 3, H, W) image and its all-valid (1, H, W) mask to trace with."""
    return (
        torch.zeros(1, 3, height, width, device=device),
        torch.ones(1, height, width, dtype=torch.bool, device=device),
    )


def build(
    model: object, *, task: object, prompt: object, height: object, width: object
) -> tuple[PromptedImageModel, ExportMetadata]:
    """The module to trace and its metadata; the prompt is encoded here, once.

    Raises:
        ValueError: a model that is not a UniPercept, a task that cannot be exported, an
            empty or wrong prompt, or a size that is not a positive multiple of 32.
    """
    if not isinstance(model, UniPercept):
        raise ValueError(
            f"only UniPercept models can be exported, got {type(model).__name__} (a UNINEXT "
            "model runs its own Python post-processing between the heads)"
        )
    task_class = check_task(task)
    height, width = check_size(height, width)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}")
    parsed = task_class().make_prompt(prompt)
    if parsed.kind not in model.prompt_encoders:
        raise ValueError(
            f"task {task!r} needs {parsed.kind!r} prompts, which this model cannot encode (it "
            f"has {sorted(model.prompt_encoders)})"
        )
    with torch.no_grad():
        embedding = model.encode_prompts([parsed])
    labels = parsed.names if parsed.kind == "category" else (parsed.text,)
    module = PromptedImageModel(model, embedding, with_masks=task_class.with_masks)
    with torch.no_grad():
        # Q can be below the configured number of queries on a small canvas (two-stage
        # selection keeps at most one query per encoder position).
        queries = module(*example_inputs(height, width, model_device(model)))[0].shape[1]
    preprocess = model.default_preprocess()
    from unipercept import __version__

    metadata = ExportMetadata(
        task=task,  # type: ignore[arg-type]
        prompt=prompt,
        labels=tuple(labels),
        height=height,
        width=width,
        # 7 significant digits give back the same float32 (and read 0.485, not 0.48500001).
        pixel_mean=tuple(float(f"{v:.7g}") for v in preprocess.mean.flatten().tolist()),
        pixel_std=tuple(float(f"{v:.7g}") for v in preprocess.std.flatten().tolist()),
        mask_stride=model.heads.mask_branch.stride if task_class.with_masks else None,
        num_queries=int(queries),
        outputs=module.output_names,
        library_version=__version__,
    )
    return module, metadata
