"""A UniPercept model for one task and prompt as an ONNX graph or a ``torch.export`` program.

    model = unipercept.load_model("unipercept-tiny")
    export_onnx(model, Path("det.onnx"), task="det", prompt="circle. square", height=160,
                width=160)
    predictor = OnnxPredictor("det.onnx")         # unipercept.export.runtime
    instances = predictor.predict(image)          # what Predictor.predict(image, prompt) answers

The prompt is encoded once in PyTorch and built into the graph as constants, so the graph
needs no tokenizer or text encoder; one graph answers one prompt (export again for another:
it takes seconds to minutes). The graph's inputs are a normalised image on a fixed canvas and
its valid-pixel mask; its outputs are the last decoder layer's raw per-query predictions
(:class:`~unipercept.export.graph.PromptedImageModel`). Top-k, thresholds, duplicate
suppression and resizing to the original image stay in Python
(:func:`unipercept.export.runtime.postprocess`), as in ``Predictor.predict``.

Both formats come from one ``torch.export.export(strict=True)`` trace: strict (TorchDynamo)
tracing folds the model's per-level Python loops over feature sizes into constants, which the
non-strict tracer cannot (they are read from tensors). ONNX comes from the dynamo-based
``torch.onnx.export(dynamo=True)`` (the TorchScript exporter is deprecated), which needs
``onnxscript``. Deformable attention runs its PyTorch reference (``grid_sample``) while
tracing; the compiled op has no ONNX form.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from unipercept.export.graph import (
    INPUT_NAMES,
    METADATA_PREFIX,
    ExportMetadata,
    build,
    check_size,
    check_task,
    example_inputs,
    model_device,
    pytorch_deformable_attention,
)

#: The file inside a .pt2 archive that holds :class:`ExportMetadata` (``torch.export.save``'s
#: ``extra_files``).
PROGRAM_METADATA_FILE = "unipercept.json"
#: The lowest ONNX opset the dynamo-based exporter writes.
MIN_OPSET = 18


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) inside the block; the caller's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's chatter off inside the block: onnxscript's optimizer logs every rewrite
    at INFO (hundreds of lines under a command line's logging) and warns about each fold it
    skips, torch.onnx warns that torchvision's ops are not registered (the project does not
    use them), and torch's pytree warns about its own deprecated LeafSpec while tracing.
    Errors still surface."""
    levels = {
        "onnxscript": logging.ERROR,
        "onnx_ir": logging.WARNING,
        "torch.onnx": logging.ERROR,
    }
    previous = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def trace(
    model: object, *, task: str, prompt: str, height: int, width: int
) -> tuple[torch.export.ExportedProgram, ExportMetadata]:
    """The ``torch.export`` program of ``model`` for ``task`` and ``prompt`` at (height,
    width), and its metadata; both exporters write this.

    Raises:
        ValueError: see :func:`unipercept.export.graph.build`.
        RuntimeError: the traced graph still calls the compiled deformable-attention op.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a UniPercept model, got {type(model).__name__}")
    with _eval_mode(model), pytorch_deformable_attention(), torch.no_grad(), _quiet_exporter():
        module, metadata = build(model, task=task, prompt=prompt, height=height, width=width)
        inputs = example_inputs(height, width, model_device(model))
        program = torch.export.export(module, inputs, strict=True)
    compiled = sorted(
        {str(node.target) for node in program.graph.nodes if "unipercept" in str(node.target)}
    )
    if compiled:
        raise RuntimeError(f"the traced graph calls compiled ops {compiled}; it cannot run as ONNX")
    return program, metadata


def _check_destination(out: object, suffix: str) -> Path:
    """``out`` as a path that may be written: new, or an earlier export (never a folder or
    another file).

    Raises:
        ValueError: not a path, or a wrong suffix.
        FileExistsError: a folder, or a file this exporter did not write.
    """
    if not isinstance(out, (str, os.PathLike)):
        raise ValueError(f"out must be a path, got {type(out).__name__}")
    path = Path(out)
    if path.suffix != suffix:
        raise ValueError(f"out must end in {suffix}, got {path.name!r}")
    if path.is_dir():
        raise FileExistsError(f"{path} is a folder; a {suffix} file is written")
    if path.exists() and not _is_earlier_export(path):
        raise FileExistsError(
            f"{path} exists and is not an earlier unipercept export; it is left as it is "
            "(remove it or choose another name)"
        )
    return path


def _is_earlier_export(path: Path) -> bool:
    """Whether ``path`` holds a file this module wrote (so it may be replaced)."""
    if path.suffix == ".pt2":
        try:
            with zipfile.ZipFile(path) as archive:
                return any(
                    name.endswith("/extra/" + PROGRAM_METADATA_FILE) for name in archive.namelist()
                )
        except (OSError, zipfile.BadZipFile):
            return False
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a protobuf at all: onnx raises several kinds of errors
        return False
    return any(prop.key.startswith(METADATA_PREFIX) for prop in proto.metadata_props)


@contextlib.contextmanager
def _staging(destination: Path) -> Iterator[Path]:
    """A fresh folder beside ``destination`` to write into; its files move over the
    destination's folder when the block succeeds, and it is removed either way."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
        for written in sorted(staging.iterdir()):  # the graph, and its .data file if any
            os.replace(written, destination.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_onnx(
    model: object,
    out: str | os.PathLike[str],
    *,
    task: str,
    prompt: str,
    height: int,
    width: int,
    opset: int | None = None,
) -> Path:
    """Writes ``model`` for one task and prompt as an ONNX graph.

    Args:
        model: a UniPercept model (e.g. ``unipercept.load_model("unipercept-tiny")``).
        out: the ``.onnx`` file: new, or an earlier export (replaced atomically). A model
            over 2 GB gets its weights in ``<out>.data`` beside it.
        task: det, insseg, rec or res.
        prompt: category names (``"person. car"``) for det/insseg, an expression for rec/res.
        height, width: the input canvas, multiples of 32. Images are letterboxed into it
            (:func:`unipercept.export.runtime.letterbox`).
        opset: the ONNX opset (at least 18); default the exporter's.

    Returns:
        ``out``. Inputs ``image`` (1, 3, H, W) float32 and ``valid`` (1, H, W) bool; outputs
        ``logits``, ``quality``, ``scores``, ``boxes`` and for insseg/res ``mask_logits``
        (see :class:`~unipercept.export.graph.PromptedImageModel`). The metadata
        (:class:`~unipercept.export.graph.ExportMetadata`) is in the file's
        ``metadata_props``.

    Raises:
        ValueError: a wrong model, task (video tasks say why they cannot be exported),
            prompt, size, opset or file name.
        FileExistsError: ``out`` is a folder, or a file this exporter did not write.
        ImportError: ``onnxscript`` (needed by the exporter) is not installed.
    """
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
        raise ValueError(f"opset must be an integer, got {opset!r}")
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET} (the exporter's lowest), got {opset}")
    check_task(task)  # the cheap checks first: a video task is refused before any import
    check_size(height, width)
    path = _check_destination(out, ".onnx")
    try:
        import onnxscript  # noqa: F401  (the dynamo-based exporter needs it)
    except ImportError as error:
        raise ImportError(
            "ONNX export needs onnxscript: pip install onnxscript (or unipercept[dev])"
        ) from error
    program, metadata = trace(model, task=task, prompt=prompt, height=height, width=width)
    with _quiet_exporter():
        onnx_program = torch.onnx.export(
            program,
            example_inputs(height, width, model_device(model)),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(metadata.outputs),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    onnx_program.model.metadata_props.update(metadata.to_strings())
    with _staging(path) as staging:
        onnx_program.save(staging / path.name)
    return path


def export_program(
    model: object,
    out: str | os.PathLike[str],
    *,
    task: str,
    prompt: str,
    height: int,
    width: int,
) -> Path:
    """Writes the same graph as :func:`export_onnx` as a ``torch.export`` program (``.pt2``,
    ``torch.export.save``); ``torch.export.load(out).module()(image, valid)`` returns the same
    outputs as the ONNX graph, as a tuple in :attr:`ExportMetadata.outputs` order. The
    metadata is the archive's extra file ``unipercept.json`` (:func:`program_metadata`).

    A .pt2 may hold pickled objects and ``torch.export.load`` can fall back to unpickling
    them: load only programs you wrote.

    Raises:
        ValueError, FileExistsError: as :func:`export_onnx`.
    """
    check_task(task)
    check_size(height, width)
    path = _check_destination(out, ".pt2")
    program, metadata = trace(model, task=task, prompt=prompt, height=height, width=width)
    extra = {PROGRAM_METADATA_FILE: json.dumps(metadata.to_strings(), indent=1)}
    with _staging(path) as staging:
        torch.export.save(program, staging / path.name, extra_files=extra)
    return path


def program_metadata(path: str | os.PathLike[str]) -> ExportMetadata:
    """The metadata of a .pt2 written by :func:`export_program`, read without loading the
    program (nothing is unpickled).

    Raises:
        ValueError: not such an archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/extra/" + PROGRAM_METADATA_FILE)]
            if not names:
                raise ValueError(
                    f"{path} holds no {PROGRAM_METADATA_FILE}: not a unipercept export"
                )
            values = json.loads(archive.read(names[0]))
    except (OSError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path} is not a .pt2 archive: {error}") from error
    return ExportMetadata.from_strings(values)
