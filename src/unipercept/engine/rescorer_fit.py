"""Fits a model's referring re-scorer on a frozen model (a probe on cached features).

The rest of the model does not change, so each training expression needs one forward pass,
done once: the last layer's query states, boxes and scores and the fused word tokens are
cached, and the small re-scorer then trains on them for thousands of steps in a few minutes
on a CPU. Every image is also seen mirrored, with "left" and "right" swapped in its
expressions, which doubles the examples and teaches that the words name a side.

A tenth of the images is held out; the re-scorer is scored on them as the REC task ranks
(probability^(1-w) * predicted IoU^w, top-1 box with IoU >= 0.5), and the best step is kept.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from unipercept.data.io import load_image
from unipercept.data.types import Sample
from unipercept.modeling.rescorer import ReferringRescorer
from unipercept.modeling.unipercept import UniPercept
from unipercept.structures import ExpressionPrompt
from unipercept.structures.boxes import box_convert, box_iou
from unipercept.tasks.rec import ReferringTask

logger = logging.getLogger(__name__)

# A predicted box counts as the target at this IoU (REC's P@0.5).
HIT_IOU = 0.5
# The REC task's quality weight (confidence = p^(1-w) * q^w): the fit ranks as it does.
QUALITY_WEIGHT = ReferringTask().quality_weight
_SIDES = {"left": "right", "right": "left"}


def mirrored_expression(text: str) -> str:
    """``text`` for the mirrored image: "left" and "right" swapped, as whole words."""
    return re.sub(r"\b(left|right)\b", lambda match: _SIDES[match.group(1)], text)


def mirrored_box(box: Tensor, width: int) -> Tensor:
    """An xyxy box in an image ``width`` pixels wide, mirrored left-right."""
    return torch.stack((width - box[2], box[1], width - box[0], box[3]))


@dataclass(frozen=True, eq=False)
class RescorerExamples:
    """Cached inputs of the re-scorer, one row per (image, expression).

    Attributes:
        hidden: (N, Q, C); boxes: (N, Q, 4) normalised cxcywh; logits, quality: (N, Q).
        words: (N, L, C) fused word tokens, zero-padded; word_valid: (N, L) bool.
        iou: (N, Q) each query's box IoU with the expression's target.
        image: (N,) index of the source image (held-out splits go by image).
    """

    hidden: Tensor
    boxes: Tensor
    logits: Tensor
    quality: Tensor
    words: Tensor
    word_valid: Tensor
    iou: Tensor
    image: Tensor

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def select(self, rows: Tensor) -> RescorerExamples:
        return RescorerExamples(
            **{name: getattr(self, name)[rows] for name in self.__dataclass_fields__}
        )

    def inputs(self) -> tuple[Tensor, ...]:
        return (self.hidden, self.boxes, self.logits, self.quality, self.words, self.word_valid)


@dataclass(frozen=True)
class RescorerReport:
    """What fitting did: examples used, the best step, held-out P@0.5 before and after."""

    train_examples: int
    held_out_examples: int
    best_step: int
    held_out_before: float
    held_out_after: float


def _pad(tensors: list[Tensor], length: int) -> Tensor:
    out = tensors[0].new_zeros((len(tensors), length, *tensors[0].shape[1:]))
    for index, tensor in enumerate(tensors):
        out[index, : tensor.shape[0]] = tensor
    return out


@torch.no_grad()
def collect_examples(
    model: UniPercept,
    samples: Iterable[Sample],
    *,
    mirror: bool = True,
    progress: bool = False,
) -> RescorerExamples:
    """Runs ``model`` (its re-scorer left out) on every expression of every image sample.

    Args:
        model: a UniPercept model with an expression encoder.
        samples: image samples with expressions and annotated targets (e.g. a referring
            ``DatasetSpec``'s ``read()``); samples without expressions are skipped.
        mirror: also every image mirrored left-right, its expressions' sides swapped.
        progress: a tqdm bar over the samples.
    """
    from tqdm import tqdm

    if "expression" not in model.prompt_encoders:
        raise ValueError("the model has no expression encoder: it cannot answer expressions")
    preprocess = model.default_preprocess()
    device = next(model.parameters()).device
    rescorer, model.rescorer = model.rescorer, None
    was_training = model.training
    model.eval()
    rows: dict[str, list[Tensor]] = {name: [] for name in RescorerExamples.__dataclass_fields__}
    try:
        for image_index, sample in enumerate(tqdm(samples, disable=not progress, unit="image")):
            if not sample.expressions:
                continue
            frame = sample.frames[0]
            image = load_image(frame.image)
            height, width = image.shape[-2:]
            scale = torch.tensor([width, height, width, height], dtype=torch.float32)
            variants = [(image, False), (image.flip(-1), True)] if mirror else [(image, False)]
            for picture, mirrored in variants:
                texts, targets = [], []
                for expression in sample.expressions:
                    chosen = frame.instances.track_ids == expression.target_ids[0]
                    if not bool(chosen.any()):
                        raise ValueError(
                            f"{sample.dataset} sample {sample.sample_id}: expression "
                            f"{expression.text!r} names track {expression.target_ids[0]}, "
                            "which is not annotated in the image"
                        )
                    box = frame.instances.boxes[chosen][0].float()
                    if mirrored:
                        box = mirrored_box(box, width)
                    texts.append(
                        mirrored_expression(expression.text) if mirrored else expression.text
                    )
                    targets.append(box / scale)
                batch = preprocess([picture] * len(texts), device)
                output = model(batch, [ExpressionPrompt(text) for text in texts])
                assert output.prompt_tokens is not None and output.prompt_valid is not None
                predicted = box_convert(output.boxes[-1].float(), "cxcywh", "xyxy").cpu()
                for row, target in enumerate(targets):
                    rows["iou"].append(box_iou(predicted[row], target[None])[:, 0])
                    valid = output.prompt_valid[row].cpu()
                    rows["words"].append(output.prompt_tokens[row].float().cpu()[valid])
                rows["hidden"].append(output.hidden_states[-1].float().cpu())
                rows["boxes"].append(output.boxes[-1].float().cpu())
                rows["logits"].append(output.logits[-1, ..., 0].float().cpu())
                rows["quality"].append(output.quality[-1].float().cpu())
                rows["image"].append(torch.full((len(texts),), image_index))
    finally:
        model.rescorer = rescorer
        model.train(was_training)
    if not rows["iou"]:
        raise ValueError("no sample has an expression: nothing to fit the re-scorer on")
    length = max(words.shape[0] for words in rows["words"])
    return RescorerExamples(
        hidden=torch.cat(rows["hidden"]),
        boxes=torch.cat(rows["boxes"]),
        logits=torch.cat(rows["logits"]),
        quality=torch.cat(rows["quality"]),
        words=_pad(rows["words"], length),
        word_valid=_pad([torch.ones(w.shape[0], dtype=torch.bool) for w in rows["words"]], length),
        iou=torch.stack(rows["iou"]),
        image=torch.cat(rows["image"]),
    )


def task_confidence(logits: Tensor, quality: Tensor) -> Tensor:
    """What the REC task ranks queries by: p^(1-w) * q^w, as log (any monotone form ranks
    alike)."""
    return (1 - QUALITY_WEIGHT) * F.logsigmoid(logits) + QUALITY_WEIGHT * F.logsigmoid(quality)


def precision(logits: Tensor, examples: RescorerExamples) -> float:
    """P@0.5 of the top-1 query by the task's confidence."""
    best = task_confidence(logits, examples.quality).argmax(1, keepdim=True)
    return float((examples.iou.gather(1, best)[:, 0] >= HIT_IOU).float().mean())


def ranking_loss(logits: Tensor, examples: RescorerExamples) -> Tensor:
    """Cross-entropy over an image's queries of the task's confidence, every query that hits
    the target (IoU >= 0.5) counting as the answer."""
    confidence = task_confidence(logits, examples.quality)
    hits = examples.iou >= HIT_IOU
    positive = torch.logsumexp(confidence.masked_fill(~hits, float("-inf")), 1)
    return (torch.logsumexp(confidence, 1) - positive).mean()


def calibration_loss(logits: Tensor, examples: RescorerExamples) -> Tensor:
    """Binary cross-entropy of each query's probability against whether it hits the target,
    summed over an image's queries: ranking alone fixes only differences between logits, so
    without it the scores drift (every answer near 0)."""
    hits = (examples.iou >= HIT_IOU).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, hits, reduction="none").sum(1).mean()


def fit_rescorer(
    rescorer: ReferringRescorer,
    examples: RescorerExamples,
    *,
    steps: int = 6000,
    batch_size: int = 64,
    lr: float = 6e-4,
    weight_decay: float = 0.01,
    eval_every: int = 250,
    held_out_fraction: float = 0.1,
    calibration_weight: float = 1.0,
    seed: int = 0,
) -> RescorerReport:
    """Trains ``rescorer`` in place on ``examples`` and keeps its best held-out step.

    Examples whose target no query hits cannot be ranked right and are left out of training;
    with none left (an untrained model), the re-scorer stays unfitted (it changes no score).
    The loss ranks the queries as the task does (:func:`ranking_loss`) and keeps their
    probabilities meaningful (:func:`calibration_loss`, times ``calibration_weight``).
    A ``held_out_fraction`` of the images (every image's expressions together) is scored every
    ``eval_every`` steps; with no held-out images, the last step is kept.
    """
    if steps < 1 or batch_size < 1 or eval_every < 1:
        raise ValueError(
            f"steps ({steps}), batch_size ({batch_size}) and eval_every ({eval_every}) must "
            "be at least 1"
        )
    if not 0 <= held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    generator = torch.Generator().manual_seed(seed)
    images = examples.image.unique()
    shuffled = images[torch.randperm(len(images), generator=generator)]
    held_images = shuffled[: int(len(images) * held_out_fraction)]
    is_held = torch.isin(examples.image, held_images)
    held = examples.select(is_held.nonzero()[:, 0])
    trainable = (~is_held) & (examples.iou >= HIT_IOU).any(1)
    train = examples.select(trainable.nonzero()[:, 0])
    before = precision(held.logits, held) if len(held) else float("nan")
    if len(train) == 0:
        # Nothing could be ranked right (an untrained model): the unfitted re-scorer, which
        # changes no score, is the answer.
        logger.warning("re-scorer: no training expression has a query on its target; not fitted")
        rescorer.eval()
        return RescorerReport(0, len(held), 0, before, before)

    def score() -> float:
        rescorer.eval()
        with torch.no_grad():
            value = precision(rescorer(*held.inputs()), held)
        rescorer.train()
        return value

    best_step, best_score, best_state = 0, before, copy.deepcopy(rescorer.state_dict())
    optimizer = torch.optim.AdamW(rescorer.parameters(), lr=lr, weight_decay=weight_decay)
    rescorer.train()
    for step in range(1, steps + 1):
        rows = torch.randint(len(train), (batch_size,), generator=generator)
        batch = train.select(rows)
        logits = rescorer(*batch.inputs())
        loss = ranking_loss(logits, batch) + calibration_weight * calibration_loss(logits, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if len(held) and (step % eval_every == 0 or step == steps):
            current = score()
            if current > best_score:
                best_step, best_score = step, current
                best_state = copy.deepcopy(rescorer.state_dict())
    if len(held):
        rescorer.load_state_dict(best_state)
    else:
        best_step, best_score = steps, float("nan")
    rescorer.eval()
    return RescorerReport(
        train_examples=len(train),
        held_out_examples=len(held),
        best_step=best_step,
        held_out_before=before,
        held_out_after=best_score,
    )
