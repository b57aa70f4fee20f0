"""Optimizer parameter groups and warm-up learning-rate schedules."""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Literal

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)

ScheduleKind = Literal["constant", "step", "cosine"]


def parameter_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    lr_multipliers: Mapping[str, float] | None = None,
    no_decay_keywords: Sequence[str] = ("norm", "bias", "embed", "level_embed"),
) -> list[dict]:
    """Group the trainable parameters by learning-rate multiplier and weight decay.

    A parameter's multiplier is that of the longest prefix of its names in ``lr_multipliers``
    (1.0 when none matches). 1-D parameters and names containing a ``no_decay_keywords`` entry
    get no weight decay. A parameter shared by several modules appears once, and all its names
    count: a text encoder shared by two prompt encoders takes the multiplier of either path.

    Args:
        model: The model; parameters with ``requires_grad=False`` are left out.
        base_lr: Learning rate before multipliers.
        weight_decay: Weight decay of the decayed groups.
        lr_multipliers: Name prefix to learning-rate multiplier, e.g. ``{"backbone.": 0.1}``. A
            prefix matching no parameter is logged as a warning (a typo, or a part this model
            variant lacks).
        no_decay_keywords: Substrings of parameter names that exempt them from weight decay.

    Returns:
        Optimizer parameter groups with keys ``params``, ``lr``, ``weight_decay`` and ``name``
        (a label such as ``"backbone.*/decay"``), in order of first appearance.

    Raises:
        ValueError: A non-positive ``base_lr``, a negative ``weight_decay`` or multiplier, or
            no trainable parameter.
    """
    if base_lr <= 0:
        raise ValueError(f"base_lr must be positive, got {base_lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}")
    lr_multipliers = dict(lr_multipliers or {})
    for prefix, multiplier in lr_multipliers.items():
        if multiplier < 0:
            raise ValueError(f"lr_multipliers[{prefix!r}] must be non-negative, got {multiplier}")
    # Every name of every parameter, frozen ones included (freezing a part is no typo).
    names: dict[int, list[str]] = {}
    parameters: dict[int, nn.Parameter] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
        parameters.setdefault(id(parameter), parameter)
    all_names = [name for aliases in names.values() for name in aliases]
    unused = [p for p in lr_multipliers if not any(n.startswith(p) for n in all_names)]
    if unused:
        logger.warning("lr_multipliers prefixes match no parameter: %s", sorted(unused))

    groups: dict[tuple[float, bool], dict] = {}
    labels: dict[tuple[float, bool], list[str]] = {}
    for key_id, parameter in parameters.items():
        if not parameter.requires_grad:
            continue
        aliases = names[key_id]
        prefixes = [p for p in lr_multipliers if any(n.startswith(p) for n in aliases)]
        prefix = max(prefixes, key=len) if prefixes else ""
        multiplier = lr_multipliers.get(prefix, 1.0)
        keyword = any(word in name for name in aliases for word in no_decay_keywords)
        decay = parameter.ndim > 1 and not keyword
        key = (multiplier, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": base_lr * multiplier,
                "weight_decay": weight_decay if decay else 0.0,
            }
            labels[key] = []
        groups[key]["params"].append(parameter)
        if f"{prefix}*" not in labels[key]:
            labels[key].append(f"{prefix}*")
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameter")
    for key, group in groups.items():
        group["name"] = f"{'|'.join(labels[key])}/{'decay' if key[1] else 'no_decay'}"
    return list(groups.values())


def warmup_schedule(
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    kind: ScheduleKind = "step",
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_factor: float = 0.001,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """Linear warm-up followed by a constant, step or cosine schedule.

    The factor applied to each group's initial learning rate at step ``s`` is the warm-up factor
    (linear from ``warmup_factor`` to 1 over ``warmup_steps``, then 1) times the decay: 1 for
    ``"constant"``, ``gamma ** (milestones passed)`` for ``"step"``, and for ``"cosine"`` a
    half cosine from 1 at the end of warm-up to ``min_lr_ratio`` at ``total_steps``.

    The schedule is a closure over these arguments, which ``LambdaLR.state_dict`` does not store:
    a restored scheduler keeps its position (``last_epoch``) and follows the schedule given here.

    Args:
        optimizer: The optimizer whose groups' learning rates are scheduled.
        total_steps: Length of training in scheduler steps.
        warmup_steps: Steps of linear warm-up.
        kind: Schedule after warm-up.
        milestones: Increasing steps at which ``"step"`` multiplies by ``gamma``.
        gamma: Step decay factor.
        warmup_factor: Factor at step 0.
        min_lr_ratio: Final factor of the cosine schedule.

    Returns:
        A ``LambdaLR`` to step once per optimizer step.

    Raises:
        ValueError: An invalid argument; the message names it.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps], got {warmup_steps}")
    if kind not in ("constant", "step", "cosine"):
        raise ValueError(f"kind must be 'constant', 'step' or 'cosine', got {kind!r}")
    milestones = list(milestones)
    if milestones and kind != "step":
        raise ValueError(f"milestones only apply to kind='step', got kind={kind!r}")
    if any(m <= 0 for m in milestones) or any(a >= b for a, b in itertools.pairwise(milestones)):
        raise ValueError(f"milestones must be positive and increasing, got {milestones}")
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    if not 0 < warmup_factor <= 1:
        raise ValueError(f"warmup_factor must be in (0, 1], got {warmup_factor}")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def decay(step: int) -> float:
        if kind == "step":
            return gamma ** bisect.bisect_right(milestones, step)
        if kind == "cosine":
            # max(1, ...) keeps the division defined when warm-up spans the whole run.
            progress = min(
                1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            )
            return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    def factor(step: int) -> float:
        warmup = 1.0
        if step < warmup_steps:
            warmup = warmup_factor + (1 - warmup_factor) * step / warmup_steps
        return warmup * decay(step)

    return LambdaLR(optimizer, factor)
