"""R-VOS results: the Ref-YouTube-VOS submission layout, and J&F per expression.

One binary PNG per frame and expression, zipped::

    Annotations/<video_id>/<expression_id>/<frame_name>.png     (mode "L", 0 or 255)

Every annotated frame of every expression of the split must be there, including those where the
object is not found (an all-zero mask). :class:`RefYouTubeVosSubmission` writes the folder
expression by expression, each expression atomically (a temporary folder renamed into place), so
an interrupted run leaves only complete expressions, and :meth:`RefYouTubeVosSubmission.zip`
packs it, also atomically. :func:`evaluate_rvos` scores such a folder against ground truth in
the same layout (each expression a one-object sequence, J&F by the DAVIS rules of
:mod:`unipercept.evaluation.davis`, averaged over expressions).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from unipercept.data.io import is_png_file, replace_folder
from unipercept.evaluation.davis import VosResult, evaluate_sequence


class RefYouTubeVosSubmission:
    """Writes predictions into ``root/Annotations/<video>/<expression>/<frame>.png``.

    Args:
        root: the submission folder (created when missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.annotations = self.root / "Annotations"

    def write(self, video: str, expression: str, frame_names: Sequence[str], masks: Tensor) -> Path:
        """Writes one expression's masks, replacing an earlier answer for it (a folder of PNG
        files; a folder holding anything else is left alone and the write refused).

        Args:
            video, expression: the ids from ``meta_expressions.json``.
            frame_names: the annotated frames' names (no extension), one per mask.
            masks: (T, H, W) bool, the referred object in each frame (all False when absent).

        Returns:
            the expression's folder.

        Raises:
            FileExistsError: the expression's folder is a file or holds non-PNG entries.
        """
        for name, value in (("video", video), ("expression", expression)):
            if not value or "/" in value or value in (".", ".."):
                raise ValueError(f"{name} id must be a plain folder name, got {value!r}")
        if masks.ndim != 3 or masks.dtype != torch.bool:
            raise ValueError(
                f"masks of {video}/{expression} must be (T, H, W) bool, got "
                f"{tuple(masks.shape)} {masks.dtype}"
            )
        if len(frame_names) != len(masks):
            raise ValueError(
                f"{video}/{expression}: {len(frame_names)} frame names for {len(masks)} masks"
            )
        if len(set(frame_names)) != len(frame_names):
            raise ValueError(f"{video}/{expression}: frame names repeat")
        target = self.annotations / video / expression
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{expression}-", dir=target.parent))
        try:
            for name, mask in zip(frame_names, masks.cpu().numpy(), strict=True):
                if not name or "/" in name:
                    raise ValueError(f"{video}/{expression}: bad frame name {name!r}")
                image = Image.fromarray(mask.astype(np.uint8) * 255)  # 2-D uint8: mode "L"
                image.save(staging / f"{name}.png")
            replace_folder(staging, target, owned=is_png_file)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def zip(self, path: str | Path) -> Path:
        """Packs ``Annotations/`` into the zip the server takes; written atomically."""
        if not self.annotations.is_dir():
            raise ValueError(f"nothing to pack: {self.annotations} does not exist")
        path = Path(path)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        os.close(handle)
        try:
            with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(self.annotations.rglob("*.png")):
                    if any(part.startswith(".") for part in file.relative_to(self.root).parts):
                        continue  # an unfinished or replaced expression
                    archive.write(file, file.relative_to(self.root).as_posix())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return path


def read_submission_masks(folder: str | Path) -> dict[str, Tensor]:
    """One expression's folder back as ``{frame_name: (H, W) bool}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no expression folder {folder}")
    masks = {}
    for file in sorted(folder.glob("*.png")):
        with Image.open(file) as image:
            if image.mode not in ("L", "1", "P"):
                raise ValueError(f"{file}: expected a grey or palette PNG, got mode {image.mode}")
            masks[file.stem] = torch.from_numpy(np.asarray(image) > 0)
    return masks


def evaluate_rvos(
    gt_root: str | Path, pred_root: str | Path, *, exclude_first_last: bool = False
) -> VosResult:
    """J&F of R-VOS predictions, one object per expression.

    Args:
        gt_root, pred_root: folders in the submission layout (``Annotations/<video>/<exp>/``
            or directly ``<video>/<exp>/``), binary PNGs (non-zero is the object).
        exclude_first_last: drop each expression's first and last frame from the scores (the
            DAVIS semi-supervised rule); R-VOS scores every annotated frame, so off by default.

    Returns:
        per-expression scores as :class:`~unipercept.evaluation.davis.VosResult` objects whose
        ``sequence`` is ``"<video>/<expression>"``.
    """
    roots = []
    for name, root in (("ground truth", Path(gt_root)), ("predictions", Path(pred_root))):
        if not root.is_dir():
            raise ValueError(f"{name} folder {root} does not exist")
        roots.append(root / "Annotations" if (root / "Annotations").is_dir() else root)
    gt, pred = roots
    expressions = sorted(p.relative_to(gt) for p in gt.glob("*/*") if p.is_dir())
    if not expressions:
        raise ValueError(f"no <video>/<expression> folders in {gt}")
    known = set(expressions)
    for folder in sorted(pred.glob("*/*")):
        hidden = folder.name.startswith(".")
        if folder.is_dir() and not hidden and folder.relative_to(pred) not in known:
            raise ValueError(f"{folder}: expression not in the ground truth {gt}")
    objects = []
    for expression in expressions:
        if not (pred / expression).is_dir():
            raise ValueError(f"{pred / expression}: no predictions for expression {expression}")
        truth, predicted = (_indices(root / expression) for root in (gt, pred))
        objects.extend(
            evaluate_sequence(
                truth,
                predicted,
                sequence=expression.as_posix(),
                exclude_first_last=exclude_first_last,
            )
        )
    return VosResult(tuple(objects))


def _indices(folder: Path) -> dict[str, np.ndarray]:
    """An expression's binary PNGs as (H, W) uint8 0/1 indices, the referred object being 1."""
    return {k: v.numpy().astype(np.uint8) for k, v in read_submission_masks(folder).items()}
