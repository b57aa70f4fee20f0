"""Running an exported graph: the image in, the same answers as ``Predictor.predict`` out.

    predictor = OnnxPredictor("det.onnx")              # onnxruntime, CPU by default
    instances = predictor.predict("street.png")        # Instances in the image's pixels
    instances = predictor.predict(image, score_threshold=0.5)   # the task's options

Or step by step, for another runtime: :func:`letterbox` the image into the graph's canvas,
run the graph on ``batch.tensor`` and ``batch.valid``, and :func:`postprocess` its outputs
with the task's usual post-processing (top-k, threshold, duplicate suppression, boxes and
masks mapped back to the original image). The metadata the graph carries
(:class:`~unipercept.export.graph.ExportMetadata`) says which task, labels, canvas and
normalisation it was exported with.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unipercept.data.preprocess import ImagePreprocessor
from unipercept.export.graph import INPUT_NAMES, MASK_OUTPUT, ExportMetadata
from unipercept.modeling.outputs import DecoderOutput
from unipercept.structures import ImageBatch, Instances


class _FitPreprocessor(ImagePreprocessor):
    """The image preprocessor with the largest size that fits the canvas, aspect kept."""

    def __init__(self, height: int, width: int, **settings: Any) -> None:
        super().__init__(**settings)
        self.canvas = (height, width)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        scale = min(self.canvas[0] / height, self.canvas[1] / width)
        return (
            min(self.canvas[0], max(1, round(height * scale))),
            min(self.canvas[1], max(1, round(width * scale))),
        )


def letterbox(image: Any, metadata: ExportMetadata) -> ImageBatch:
    """``image`` resized as large as fits the graph's canvas (aspect kept), normalised, and
    padded at the bottom and right to exactly the canvas.

    When the canvas is the padded size the model's preprocessor gives an image (e.g. an image
    of the export's aspect ratio), this is the same batch that ``Predictor.predict`` builds.

    Args:
        image: a path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor (uint8, or
            float in [0, 1]).

    Returns:
        a batch of one: ``tensor`` (1, 3, H, W) and ``valid`` (1, H, W) are the graph's inputs.
    """
    from unipercept.api import as_image

    height, width = metadata.height, metadata.width
    preprocess = _FitPreprocessor(
        height, width, pixel_mean=metadata.pixel_mean, pixel_std=metadata.pixel_std
    )
    fitted = preprocess([as_image(image)])
    tensor = fitted.tensor.new_zeros((1, 3, height, width))  # zero after normalisation
    valid = torch.zeros((1, height, width), dtype=torch.bool)
    h, w = fitted.image_sizes[0]
    tensor[0, :, :h, :w] = fitted.tensor[0, :, :h, :w]
    valid[0, :h, :w] = True
    return ImageBatch(
        tensor=tensor,
        valid=valid,
        image_sizes=fitted.image_sizes,
        original_sizes=fitted.original_sizes,
    )


@dataclass(frozen=True, eq=False)
class GraphOutput(DecoderOutput):
    """The graph's outputs in the shape the tasks' post-processing reads (one layer: the
    last), with the mask logits of every query already computed by the graph.

    Attributes:
        query_masks: (B, Q, h, w) mask logits on the padded canvas, or None.
    """

    query_masks: Tensor | None = None

    def mask_logits(self, layer: int, batch_index: Tensor, query_index: Tensor) -> Tensor:
        if self.query_masks is None:
            raise ValueError("this graph has no mask_logits output (exported for det or rec)")
        if layer not in (-1, 0):
            raise ValueError(f"the graph holds the last decoder layer only, not layer {layer}")
        return self.query_masks[batch_index, query_index]


def _tensor(outputs: Mapping[str, Any], name: str) -> Tensor:
    if name not in outputs:
        raise ValueError(f"outputs lack {name!r}; they hold {sorted(outputs)}")
    value = outputs[name]
    return value if isinstance(value, Tensor) else torch.from_numpy(np.asarray(value))


def graph_output(
    outputs: Mapping[str, Any], batch: ImageBatch, metadata: ExportMetadata
) -> GraphOutput:
    """The graph's outputs as the decoder output the tasks read (e.g. for
    ``DetectionTask.detections(output, batch, 0, with_embeddings=True)``, which a tracker
    takes).

    Args:
        outputs: output name -> array (numpy or torch), e.g. ``dict(zip(metadata.outputs,
            session.run(None, inputs)))``.
        batch: the batch the graph ran on (from :func:`letterbox`).
        metadata: the graph's metadata.
    """
    logits = _tensor(outputs, "logits")
    batch_size, num_queries, num_rows = logits.shape
    empty = logits.new_zeros((1, batch_size, num_queries, 0))
    masks = _tensor(outputs, MASK_OUTPUT) if metadata.mask_stride is not None else None
    return GraphOutput(
        logits=logits[None],
        boxes=_tensor(outputs, "boxes")[None],
        quality=_tensor(outputs, "quality")[None],
        mask_kernels=empty,
        mask_features=logits.new_zeros((batch_size, 0, 1, 1)),
        mask_stride=metadata.mask_stride or 1,
        embeddings=_tensor(outputs, "embeddings"),
        hidden_states=empty,
        class_valid=torch.ones((batch_size, num_rows), dtype=torch.bool),
        image_sizes=torch.as_tensor(batch.image_sizes),
        query_masks=masks,
    )


def postprocess(
    outputs: Mapping[str, Any],
    batch: ImageBatch,
    metadata: ExportMetadata,
    **options: Any,
) -> list[Instances]:
    """The task's results from the graph's outputs, as ``Predictor.predict`` gives them.

    Args:
        outputs, batch, metadata: as :func:`graph_output`.
        options: the task's options, e.g. ``score_threshold=0.5``, ``top_k=10``.

    Returns:
        per image, Instances in its original pixels; ``labels`` index ``metadata.labels``.
    """
    from unipercept.api import resolve_task

    task = resolve_task(metadata.task, **options)
    return task.postprocess(graph_output(outputs, batch, metadata), batch)


class OnnxPredictor:
    """An exported ONNX graph run by onnxruntime.

    Args:
        path: the .onnx file from :func:`unipercept.export.onnx.export_onnx`.
        providers: onnxruntime execution providers, in order of preference.

    Attributes:
        metadata: the task, labels, canvas and normalisation the graph was exported with.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError("OnnxPredictor needs onnxruntime: pip install onnxruntime") from error
        self.session = onnxruntime.InferenceSession(os.fspath(path), providers=list(providers))
        self.metadata = ExportMetadata.from_strings(
            self.session.get_modelmeta().custom_metadata_map
        )

    def run(self, batch: ImageBatch) -> dict[str, np.ndarray]:
        """The graph's raw outputs for a batch from :func:`letterbox`, by name."""
        inputs = {
            INPUT_NAMES[0]: batch.tensor.numpy().astype(np.float32, copy=False),
            INPUT_NAMES[1]: batch.valid.numpy(),
        }
        return dict(zip(self.metadata.outputs, self.session.run(None, inputs), strict=True))

    def predict(self, image: Any, **options: Any) -> Instances:
        """Results for one image, in its pixels; ``options`` go to the task."""
        batch = letterbox(image, self.metadata)
        return postprocess(self.run(batch), batch, self.metadata, **options)[0]
