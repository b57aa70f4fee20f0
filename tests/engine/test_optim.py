from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from unipercept.engine.optim import parameter_groups, warmup_schedule


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.prompt_encoders = nn.ModuleDict(
            {"category": nn.ModuleDict({"text": nn.ModuleDict({"model": nn.Linear(4, 4)})})}
        )
        self.level_embed = nn.Parameter(torch.zeros(4, 8))
        self.input_norm = nn.Linear(4, 4)
        head = nn.Linear(4, 4)
        self.heads = nn.ModuleList([head] * 3)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)


def by_name(groups: list[dict]) -> dict[str, dict]:
    return {group["name"]: group for group in groups}


def test_groups_by_multiplier_and_decay():
    model = Model()
    multipliers = {"backbone.": 0.1, "backbone.1.": 0.5, "prompt_encoders.category.": 0.2}
    groups = by_name(
        parameter_groups(model, base_lr=1e-3, weight_decay=0.05, lr_multipliers=multipliers)
    )
    assert set(groups) == {
        "backbone.*/decay",
        "backbone.*/no_decay",
        "backbone.1.*/no_decay",
        "prompt_encoders.category.*/decay",
        "prompt_encoders.category.*/no_decay",
        "*/decay",
        "*/no_decay",
    }
    assert groups["backbone.*/decay"]["params"] == [model.backbone[0].weight]
    # The longest prefix wins: the batch norm follows "backbone.1." rather than "backbone.".
    assert groups["backbone.1.*/no_decay"]["lr"] == pytest.approx(5e-4)
    assert groups["backbone.*/decay"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone.*/decay"]["weight_decay"] == 0.05
    assert groups["backbone.*/no_decay"]["weight_decay"] == 0.0
    # Names with a keyword get no decay even when 2-D; the shared head appears once.
    assert groups["*/decay"]["params"] == [model.heads[0].weight]
    no_decay = groups["*/no_decay"]["params"]
    assert any(p is model.level_embed for p in no_decay)
    assert any(p is model.input_norm.weight for p in no_decay)
    everything = [p for group in groups.values() for p in group["params"]]
    assert len(everything) == len({id(p) for p in everything})
    assert not any(p is model.frozen.weight for p in everything)
    assert len(everything) == sum(1 for p in model.parameters() if p.requires_grad)
    torch.optim.AdamW(list(groups.values()))


def test_equal_multipliers_share_a_group():
    groups = parameter_groups(
        Model(),
        base_lr=1.0,
        weight_decay=0.0,
        lr_multipliers={"backbone.": 0.1, "prompt_encoders.": 0.1},
    )
    assert "backbone.*|prompt_encoders.*/decay" in by_name(groups)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"base_lr": 0.0}, "base_lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"lr_multipliers": {"backbone.": -1.0}}, "backbone"),
    ],
)
def test_parameter_group_errors(kwargs, word):
    arguments = {"base_lr": 1e-3, "weight_decay": 0.0, **kwargs}
    with pytest.raises(ValueError, match=word):
        parameter_groups(Model(), **arguments)
    with pytest.raises(ValueError, match="no trainable"):
        parameter_groups(nn.Linear(2, 2).requires_grad_(False), base_lr=1.0, weight_decay=0.0)


def test_unmatched_prefix_is_a_warning(caplog):
    groups = parameter_groups(
        Model(), base_lr=1.0, weight_decay=0.0, lr_multipliers={"backbon.": 0.1}
    )
    assert {group["lr"] for group in groups} == {1.0}
    assert "backbon." in caplog.text


def test_shared_parameter_takes_the_multiplier_of_any_of_its_names():
    class TwoPaths(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            text = nn.Linear(4, 4)
            self.expression = nn.ModuleDict({"text": text})
            self.category = nn.ModuleDict({"text": text})

    model = TwoPaths()
    groups = parameter_groups(
        model, base_lr=1.0, weight_decay=0.1, lr_multipliers={"category.text.": 0.1}
    )
    assert by_name(groups)["category.text.*/decay"]["params"] == [model.category.text.weight]
    assert by_name(groups)["category.text.*/decay"]["lr"] == pytest.approx(0.1)


def lrs(scheduler, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        values.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def make(**kwargs):
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    return warmup_schedule(optimizer, **kwargs)


def test_step_schedule_with_warmup():
    values = lrs(make(total_steps=10, warmup_steps=4, milestones=(6, 8), warmup_factor=0.2), 10)
    expected = [0.4, 0.8, 1.2, 1.6, 2.0, 2.0, 0.2, 0.2, 0.02, 0.02]
    assert values == pytest.approx(expected)


def test_cosine_and_constant_schedules():
    values = lrs(make(total_steps=6, warmup_steps=2, kind="cosine", min_lr_ratio=0.1), 8)
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(2, 7)]
    assert values[2:7] == pytest.approx([2.0 * c for c in cosine])
    assert values[6:] == pytest.approx([0.2, 0.2])
    assert lrs(make(total_steps=3, kind="constant"), 3) == pytest.approx([2.0] * 3)


def test_restored_scheduler_continues_with_the_same_rates():
    kwargs = {"total_steps": 20, "warmup_steps": 5, "kind": "cosine"}
    reference = make(**kwargs)
    full = lrs(reference, 20)
    first = make(**kwargs)
    lrs(first, 8)
    buffer = io.BytesIO()
    torch.save({"optimizer": first.optimizer.state_dict(), "scheduler": first.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = make(**kwargs)
    resumed.optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state["scheduler"])
    assert lrs(resumed, 12) == pytest.approx(full[8:])


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"total_steps": 0}, "total_steps"),
        ({"warmup_steps": 11}, "warmup_steps"),
        ({"kind": "linear"}, "kind"),
        ({"kind": "cosine", "milestones": (3,)}, "milestones"),
        ({"milestones": (5, 3)}, "milestones"),
        ({"gamma": 0.0}, "gamma"),
        ({"warmup_factor": 0.0}, "warmup_factor"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
    ],
)
def test_schedule_errors(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make(**{"total_steps": 10, **kwargs})
