"""rec, res and rvos ``--data``: run a model on every expression of a ``conf/data`` referring
dataset and score its answers (no official results file exists for rec and res)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unipercept.evaluate.baselines import mask_truth, start_session

if TYPE_CHECKING:
    import numpy as np

    from unipercept.api import Predictor
    from unipercept.data.types import Frame, Sample
    from unipercept.structures import Instances


def referring_spec(data: str, overrides: Sequence[str]):
    """The DatasetSpec of ``conf/data/<data>`` with ``key=value`` overrides; expressions only."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from unipercept import config

    try:
        composed = config.compose_group_option("data", data)
        OmegaConf.set_struct(composed, False)
        for override in overrides:
            key, _, value = override.partition("=")
            if not value:
                raise ValueError(f"--data-override {override!r}: expected key=value")
            OmegaConf.update(composed, key, value, merge=True)
        spec = config.instantiate(composed)
    except HydraException as error:
        raise ValueError(f"--data {data}: {error}") from error
    if spec.prompt_kind != "expression":
        raise ValueError(f"--data {data} trains {spec.prompt_kind} prompts, not expressions")
    return spec


def _target_mask(frame: Frame, target_ids: Sequence[int]) -> np.ndarray:
    """(H, W) uint8 the union of the target's masks in an annotated frame (0 where it is not
    in the frame)."""
    import numpy as np
    import torch

    from unipercept.structures.masks import RLEMasks

    instances = frame.instances
    masks = instances.masks
    masks = masks.decode() if isinstance(masks, RLEMasks) else masks
    target = torch.isin(instances.track_ids, torch.tensor(target_ids))
    return masks[target].any(0).numpy().astype(np.uint8)


def _first_target(sample: Sample, target_ids: Sequence[int]) -> Instances:
    """The target's first-frame mask as one instance (for a baseline; empty where the target is
    not in the first frame)."""
    import torch

    first = sample.frames[0]
    if not first.annotated:
        raise ValueError(
            f"video {sample.sample_id}: its first frame has no masks, the truth the copy-first "
            "baseline answers with"
        )
    return mask_truth(torch.from_numpy(_target_mask(first, target_ids)).bool()[None])


def evaluate_rvos_model(
    data: str,
    predictor: Predictor,
    overrides: Sequence[str] = (),
    results: Path | None = None,
) -> dict[str, Any]:
    """R-VOS J&F of a model on an annotated referring video dataset (``conf/data``, e.g.
    ``refytvos`` on its train split or a split with masks): each expression runs an online
    session over its video; its top-1 masks are scored on the annotated frames against the
    union of the target's masks, and, with ``results``, written in the submission layout."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from unipercept.data.io import load_image
    from unipercept.evaluation.davis import VosResult, evaluate_sequence
    from unipercept.evaluation.rvos import RefYouTubeVosSubmission

    spec = referring_spec(data, overrides)
    submission = RefYouTubeVosSubmission(results) if results is not None else None
    objects = []
    for sample in tqdm(spec.read(), desc="rvos", unit="video"):
        annotated = [frame for frame in sample.frames if frame.annotated]
        if not annotated:
            raise ValueError(f"--data {data}: video {sample.sample_id} has no masks to score")
        names = [frame.image.stem for frame in sample.frames]
        for number, expression in enumerate(sample.expressions):
            predicted, truth = {}, {}
            first = partial(_first_target, sample, expression.target_ids)
            with start_session(predictor, "rvos", expression.text, first) as session:
                for frame, name in zip(sample.frames, names, strict=True):
                    found = session.step(load_image(frame.image))
                    predicted[name] = found.masks[0].numpy().astype(np.uint8)
                    if frame.annotated:
                        truth[name] = _target_mask(frame, expression.target_ids)
            sequence = f"{sample.sample_id}/{number}"
            objects.extend(evaluate_sequence(truth, predicted, sequence=sequence))
            if submission is not None:
                masks = torch.from_numpy(np.stack([predicted[n] for n in names]).astype(bool))
                submission.write(sample.sample_id, str(number), names, masks)
    result = VosResult(tuple(objects))
    return {
        "J&F": result.j_and_f,
        "J": result.j.mean,
        "F": result.f.mean,
        "expressions": len(objects),
    }


def evaluate_referring(
    task: str, data: str, predictor: Predictor, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """REC (P@0.5) or RES (overall and mean IoU) of a model on a referring dataset named by its
    ``conf/data`` config (e.g. ``refcoco`` with ``reader.split=val``): every expression of every
    image is answered with the top-1 box or mask and compared with its target."""
    from tqdm import tqdm

    from unipercept.data.io import load_image
    from unipercept.evaluation.referring import referring_box_precision, referring_mask_iou
    from unipercept.structures.masks import RLEMasks

    spec = referring_spec(data, overrides)
    predicted, expected = [], []
    for sample in tqdm(spec.read(), desc=task, unit="image"):
        frame = sample.frames[0]
        image = load_image(frame.image)
        for expression in sample.expressions:
            target = frame.instances[frame.instances.track_ids == expression.target_ids[0]]
            found = predictor.predict(image, expression.text, task=task)
            if task == "rec":
                predicted.append(found.boxes[0])
                expected.append(target.boxes[0])
            else:
                masks = target.masks
                masks = masks.decode() if isinstance(masks, RLEMasks) else masks
                predicted.append(found.masks[0])
                expected.append(masks[0])
    if task == "rec":
        return dataclasses.asdict(referring_box_precision(predicted, expected))
    return dataclasses.asdict(referring_mask_iou(predicted, expected))
