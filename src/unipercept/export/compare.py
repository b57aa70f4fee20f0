"""``python -m unipercept.export.compare GRAPH MODEL IMAGE``: how closely an exported graph
(.onnx through onnxruntime, or .pt2 through ``torch.export.load``) agrees with its model in
PyTorch on one image, output by output and after post-processing.

    python -m unipercept.export.compare det.onnx unipercept-tiny street.png

Prints the largest absolute difference of every output, then the post-processed answers of
both (count, labels, largest score and box differences, share of mask pixels that differ).
The PyTorch side runs the normal path (the compiled deformable-attention op where it is
built). Exit codes: 0 done, 2 a refused argument (one line), 1 anything unexpected.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipercept.entry import OneLineParser, start

if TYPE_CHECKING:
    from torch import Tensor

logger = logging.getLogger("unipercept.export.compare")


def reference_outputs(model: Any, batch: Any, metadata: Any) -> dict[str, Tensor]:
    """The graph's outputs computed by ``model`` in PyTorch, for the batch the graph ran on."""
    import torch

    from unipercept.export.graph import MASK_OUTPUT, SCORE_QUALITY_WEIGHT
    from unipercept.tasks import TASKS
    from unipercept.tasks.base import combined_scores

    prompt = TASKS[metadata.task]().make_prompt(metadata.prompt)
    with torch.no_grad():
        output = model.eval()(batch, [prompt])
        values = {
            "logits": output.logits[-1],
            "quality": output.quality[-1],
            "scores": combined_scores(output, SCORE_QUALITY_WEIGHT),
            "boxes": output.boxes[-1],
            "embeddings": output.embeddings,
        }
        if MASK_OUTPUT in metadata.outputs:
            queries = torch.arange(output.logits.shape[2])
            values[MASK_OUTPUT] = output.mask_logits(-1, torch.zeros_like(queries), queries)[None]
    return values


def graph_outputs(graph: Path, batch: Any) -> tuple[dict[str, Tensor], Any]:
    """The graph's outputs for ``batch`` and its metadata (.onnx or .pt2)."""
    import torch

    if graph.suffix == ".pt2":
        from unipercept.export.onnx import program_metadata

        metadata = program_metadata(graph)
        # Loading logs a line per shape symbol the strict trace created and folded away.
        serde = logging.getLogger("torch._export.serde")
        level = serde.level
        serde.setLevel(logging.ERROR)
        try:
            program = torch.export.load(graph)
        finally:
            serde.setLevel(level)
        with torch.no_grad():
            values = program.module()(batch.tensor, batch.valid)
        return dict(zip(metadata.outputs, values, strict=True)), metadata
    from unipercept.export.runtime import OnnxPredictor

    predictor = OnnxPredictor(graph)
    values = predictor.run(batch)
    return {name: torch.from_numpy(value) for name, value in values.items()}, predictor.metadata


def _metadata(graph: Path) -> Any:
    if graph.suffix == ".pt2":
        from unipercept.export.onnx import program_metadata

        return program_metadata(graph)
    import onnx

    from unipercept.export.graph import ExportMetadata

    proto = onnx.load(str(graph), load_external_data=False)
    return ExportMetadata.from_strings({p.key: p.value for p in proto.metadata_props})


def compare(graph: str | Path, model: Any, image: Any) -> list[str]:
    """The report's lines for ``graph`` against ``model`` on ``image`` (a path, array or
    tensor, as ``Predictor.predict`` takes).

    The graph's answers are compared with ``Predictor.predict``'s when the graph's canvas gives
    the batch ``Predictor.predict`` builds, else with the model's outputs on the graph's batch
    through the same post-processing.
    """
    import torch

    from unipercept.api import as_image
    from unipercept.export.runtime import letterbox, postprocess

    graph = Path(graph)
    if graph.suffix not in (".onnx", ".pt2"):
        raise ValueError(f"the graph must be a .onnx or .pt2 file, got {graph.name!r}")
    metadata = _metadata(graph)
    pixels = as_image(image)
    batch = letterbox(pixels, metadata)
    predict_batch = model.default_preprocess()([pixels])
    same_batch = predict_batch.tensor.shape == batch.tensor.shape and bool(
        torch.equal(predict_batch.tensor, batch.tensor)
    )
    got, _ = graph_outputs(graph, batch)
    expected = reference_outputs(model, batch, metadata)
    canvas = (metadata.height, metadata.width)
    lines = [
        f"{graph.name} ({metadata.task}, {metadata.prompt!r}): image {tuple(pixels.shape[1:])} "
        f"-> {batch.image_sizes[0]} in a {canvas} canvas, "
        + ("the batch Predictor.predict builds" if same_batch else "not the batch predict builds"),
        f"{'output':<12} {'shape':<18} max |graph - pytorch|",
    ]
    for name, value in expected.items():
        difference = (got[name].float() - value.float()).abs().max().item()
        lines.append(f"{name:<12} {tuple(value.shape)!s:<18} {difference:.2e}")
    answers = postprocess(got, batch, metadata)[0]
    if same_batch:
        from unipercept.api import Predictor

        source = "Predictor.predict"
        reference = Predictor(model).predict(pixels, metadata.prompt, metadata.task)
    else:
        source = "PyTorch outputs post-processed"
        reference = postprocess(expected, batch, metadata)[0]
    lines.append(f"answers: {len(answers)} from the graph, {len(reference)} from {source}")
    if len(answers) == len(reference) and len(answers):
        labels = bool(torch.equal(answers.labels, reference.labels))
        scores = (answers.scores - reference.scores).abs().max().item()
        boxes = (answers.boxes - reference.boxes).abs().max().item()
        line = f"labels equal: {labels}; max score diff {scores:.2e}; max box diff {boxes:.2e} px"
        if answers.masks is not None:
            share = (answers.masks != reference.masks).float().mean().item()
            line += f"; mask pixels differing {share:.4%}"
        lines.append(line)
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = OneLineParser(
        logger=logger,
        prog="python -m unipercept.export.compare",
        description="Compare an exported graph with its model in PyTorch on one image.",
    )
    parser.add_argument("graph", type=Path, help="the .onnx or .pt2 file")
    parser.add_argument("model", help="what unipercept.load_model takes (a folder, a name)")
    parser.add_argument("image", type=Path, help="an image file")
    args = start(parser, argv)
    if isinstance(args, int):
        return args
    from unipercept import load_model

    try:
        lines = compare(args.graph, load_model(args.model), args.image)
    except (ValueError, OSError, ImportError) as error:  # ImportError: onnx, onnxruntime
        logger.error("error: %s", error)
        return 2
    for line in lines:
        logger.info("%s", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
