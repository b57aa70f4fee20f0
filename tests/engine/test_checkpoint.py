from __future__ import annotations

import collections
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import nn

from unipercept.engine import checkpoint as checkpoint_module
from unipercept.engine.checkpoint import (
    CheckpointError,
    check_replaceable,
    latest_checkpoint,
    load_checkpoint,
    load_model_weights,
    load_newest_checkpoint,
    save_checkpoint,
    weights_file,
)
from unipercept.engine.optim import warmup_schedule
from unipercept.engine.rng import capture_rng_state, restore_rng_state


class ExpandingConv(nn.Conv2d):
    """A first conv that grew from 3 to 4 input channels: old weights get a derived 4th."""

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "weight"
        weight = state_dict.get(key)
        if weight is not None and weight.shape[1] == 3 and self.in_channels == 4:
            state_dict[key] = torch.cat([weight, weight.mean(1, keepdim=True)], 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Net(nn.Module):
    """A stem and one head shared by six layers, like the decoder's shared prediction heads."""

    def __init__(self, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = ExpandingConv(in_channels, 4, 3)
        self.norm = nn.LayerNorm(4)
        head = nn.Linear(4, 2)
        self.heads = nn.ModuleList([head] * 6)


def trained(seed: int = 0):
    torch.manual_seed(seed)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = warmup_schedule(optimizer, total_steps=10, warmup_steps=2)
    for _ in range(3):
        loss = model.stem(torch.randn(1, 3, 5, 5)).sum() + model.heads[3](torch.randn(4)).sum()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return model, optimizer, scheduler


def steps(directory):
    return sorted(path.name for path in directory.iterdir())


def test_round_trip_restores_everything(tmp_path):
    model, optimizer, scheduler = trained()
    extra = {"epoch": 2, "sampler": {"order": torch.arange(5)}, "rng": capture_rng_state()}
    path = save_checkpoint(
        tmp_path,
        30,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        extra=extra,
        config_text="lr: 0.001\n",
    )
    assert path == tmp_path / "step_00000030"
    assert (path / "config.yaml").read_text() == "lr: 0.001\n"

    torch.manual_seed(1)
    fresh = Net()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    fresh_scheduler = warmup_schedule(fresh_optimizer, total_steps=10, warmup_steps=2)
    restored = load_checkpoint(
        path, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler
    )
    for key, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    # The shared head is loaded once and still shared.
    assert fresh.heads[0].weight is fresh.heads[5].weight
    assert fresh_optimizer.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    torch.testing.assert_close(
        fresh_optimizer.state_dict()["state"][0]["exp_avg"],
        optimizer.state_dict()["state"][0]["exp_avg"],
    )
    assert fresh_scheduler.last_epoch == scheduler.last_epoch == 3
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert restored["epoch"] == 2
    assert torch.equal(restored["sampler"]["order"], torch.arange(5))


def test_old_three_channel_weights_load_through_module_hooks(tmp_path):
    old = Net(in_channels=3)
    save_checkpoint(tmp_path, 1, model=old)
    new = Net(in_channels=4)
    assert load_model_weights(new, tmp_path / "step_00000001") == ([], [])
    weight = old.stem.weight.detach()
    torch.testing.assert_close(new.stem.weight[:, :3], weight)
    torch.testing.assert_close(new.stem.weight[:, 3:], weight.mean(1, keepdim=True))
    torch.testing.assert_close(new.heads[4].weight, old.heads[0].weight)


def test_loads_a_bare_file_and_reports_mismatches_when_not_strict(tmp_path):
    model = Net()
    save_file({"stem.weight": model.stem.weight.detach(), "extra": torch.ones(1)}, tmp_path / "w")
    missing, unexpected = load_model_weights(Net(), tmp_path / "w", strict=False)
    assert "stem.bias" in missing and "heads.0.weight" in missing
    assert unexpected == ["extra"]
    with pytest.raises(RuntimeError, match="stem.bias"):
        load_model_weights(Net(), tmp_path / "w")


def test_latest_ignores_incomplete_folders(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    model = Net()
    save_checkpoint(tmp_path, 5, model=model)
    (tmp_path / "step_00000009").mkdir()
    crashed = tmp_path / "step_00000010.tmp-12345"
    crashed.mkdir()
    save_model(model, str(crashed / "model.safetensors"))
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000005"
    # The next successful save removes the crashed run's leftover.
    save_checkpoint(tmp_path, 6, model=model)
    assert steps(tmp_path) == ["step_00000005", "step_00000006", "step_00000009"]


def test_keep_last_and_resaving_a_step(tmp_path):
    model = Net()
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model=model, keep_last=2)
    assert steps(tmp_path) == ["step_00000004", "step_00000005"]
    # A run resumed from an earlier step keeps the checkpoint it just wrote.
    save_checkpoint(tmp_path, 3, model=model, keep_last=2)
    assert steps(tmp_path) == ["step_00000003", "step_00000005"]
    with torch.no_grad():
        model.stem.weight.fill_(7.0)
    save_checkpoint(tmp_path, 5, model=model, keep_last=None)
    fresh = Net()
    load_model_weights(fresh, tmp_path / "step_00000005")
    assert torch.all(fresh.stem.weight == 7.0)
    assert steps(tmp_path) == ["step_00000003", "step_00000005"]


def test_failure_while_writing_leaves_previous_checkpoints(tmp_path, monkeypatch):
    model = Net()
    save_checkpoint(tmp_path, 1, model=model, extra={"tag": "first"})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    for step in (1, 2):
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(tmp_path, step, model=model, extra={"tag": "second"})
    monkeypatch.undo()
    assert steps(tmp_path) == ["step_00000001"]
    assert load_checkpoint(tmp_path / "step_00000001", model=Net()) == {"tag": "first"}


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (np.zeros(2), "trainer_state.extra.bad"),
        ([1, np.float64(0.5)], r"trainer_state.extra.bad\[1\]"),
        (collections.defaultdict(int), "trainer_state.extra.bad"),
        (object(), "trainer_state.extra.bad"),
    ],
)
def test_state_that_weights_only_refuses_is_rejected_before_writing(tmp_path, value, key):
    with pytest.raises(ValueError, match=key):
        save_checkpoint(tmp_path, 1, model=Net(), extra={"bad": value})
    assert list(tmp_path.iterdir()) == []


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        load_model_weights(Net(), tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_model_weights(Net(), empty)
    (tmp_path / "notes.safetensors").write_text("not safetensors")
    with pytest.raises(ValueError, match="notes.safetensors"):
        load_model_weights(Net(), tmp_path / "notes.safetensors")
    with pytest.raises(FileNotFoundError, match="empty"):
        load_checkpoint(empty, model=Net())

    path = save_checkpoint(tmp_path, 1, model=Net())
    # A pickle of a numpy array: loading it would need weights_only=False.
    torch.save({"extra": np.zeros(2)}, path / "trainer_state.pt")
    with pytest.raises(ValueError, match="trainer_state.pt"):
        load_checkpoint(path, model=Net())
    path = save_checkpoint(tmp_path, 2, model=Net())
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(path, model=Net(), optimizer=torch.optim.SGD(Net().parameters(), lr=1))


def draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def test_rng_state_round_trips_through_a_checkpoint(tmp_path):
    random.seed(3)
    np.random.seed(3)
    np.random.randn()  # leaves numpy's cached gaussian set, part of its state
    torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 1, model=Net(), extra={"rng": capture_rng_state()})
    expected = draws()
    draws()
    restore_rng_state(load_checkpoint(path, model=Net())["rng"])
    assert draws() == expected


def test_process_killed_mid_write_leaves_no_checkpoint(tmp_path):
    script = f"""
import os, torch
from torch import nn
from unipercept.engine import checkpoint
from unipercept.engine.checkpoint import save_checkpoint
save_checkpoint({str(tmp_path)!r}, 1, model=nn.Linear(2, 2))
checkpoint.torch.save = lambda *args, **kwargs: os._exit(3)
save_checkpoint({str(tmp_path)!r}, 2, model=nn.Linear(2, 2))
"""
    # The timeout only stops a hung interpreter; the script ends by itself within its two saves.
    assert subprocess.run([sys.executable, "-c", script], timeout=3600).returncode == 3
    assert [name for name in steps(tmp_path) if ".tmp-" not in name] == ["step_00000001"]
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    save_checkpoint(tmp_path, 2, model=nn.Linear(2, 2))
    assert steps(tmp_path) == ["step_00000001", "step_00000002"]


def truncate(file) -> bytes:
    """Cuts ``file`` in half, as a full disk or an interrupted copy would; returns the rest."""
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("damaged_file", "reason"),
    [("model.safetensors", "cannot read safetensors file"), ("trainer_state.pt", "weights_only")],
)
def test_a_damaged_newest_checkpoint_is_skipped_named_and_kept(
    tmp_path, caplog, damaged_file, reason
):
    model, optimizer, _ = trained()
    for step in (1, 2):
        save_checkpoint(
            tmp_path, step, model=model, optimizer=optimizer, extra={"step": step}, keep_last=2
        )
    damaged = tmp_path / "step_00000002"
    left = truncate(damaged / damaged_file)

    with caplog.at_level("WARNING", logger="unipercept.engine.checkpoint"):
        found = load_newest_checkpoint(
            tmp_path, model=Net(), optimizer=torch.optim.AdamW(Net().parameters(), lr=1e-3)
        )
    assert found is not None and found[0] == tmp_path / "step_00000001"
    assert found[1] == {"step": 1}
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "step_00000002" in warning and reason in warning, warning
    # Kept for the user under a name that is no checkpoint's, bytes untouched.
    kept = tmp_path / "step_00000002.damaged"
    assert (kept / damaged_file).read_bytes() == left
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000001"
    # The next saves write step 2 afresh and rotate by the whole checkpoints only.
    for step in (2, 3):
        save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, keep_last=2)
    assert steps(tmp_path) == ["step_00000002", "step_00000002.damaged", "step_00000003"]
    assert (kept / damaged_file).read_bytes() == left
    load_checkpoint(tmp_path / "step_00000002", model=Net())


def test_when_no_checkpoint_loads_the_error_names_each_and_nothing_moves(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model=Net())
        truncate(tmp_path / f"step_{step:08d}" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"step_00000002: .*step_00000001: "):
        load_newest_checkpoint(tmp_path, model=Net())
    assert steps(tmp_path) == ["step_00000001", "step_00000002"]
    assert load_newest_checkpoint(tmp_path / "absent", model=Net()) is None


def test_a_checkpoint_that_does_not_fit_the_model_is_not_taken_for_damage(tmp_path):
    save_checkpoint(tmp_path, 1, model=nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="stem.weight"):
        load_newest_checkpoint(tmp_path, model=Net())
    assert steps(tmp_path) == ["step_00000001"]


def test_weights_file_catches_a_truncated_copy_from_its_header(tmp_path):
    path = save_checkpoint(tmp_path, 1, model=Net())
    assert weights_file(path) == path / "model.safetensors"
    truncate(path / "model.safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        weights_file(path)


def user_things(directory) -> dict[str, bytes | None]:
    """Files and folders a user put in the checkpoint directory, some named like checkpoints;
    maps each path (relative) to its bytes, None for a folder."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "notes.txt").write_text("mine")
    (directory / "step_00000003").write_text("a file, not a checkpoint")
    (directory / "step_00000004").mkdir()
    (directory / "step_00000004" / "results.json").write_text("{}")
    (directory / "step_00000005").mkdir()  # an empty folder
    (directory / "step_00000006.tmp-99").write_text("a file with a tmp name")
    (directory / "step_00000007.tmp-99-old").mkdir()
    (directory / "step_00000007.tmp-99-old" / "model.safetensors").write_text("not ours")
    (directory / "step_00000007.tmp-99-old" / "plot.png").write_text("png")
    elsewhere = directory.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "data.bin").write_text("data")
    (directory / "step_00000008").symlink_to(elsewhere, target_is_directory=True)
    return snapshot(directory)


def snapshot(directory) -> dict[str, bytes | None]:
    return {
        str(path.relative_to(directory)): None if path.is_dir() else path.read_bytes()
        for path in sorted(directory.rglob("*"))
    }


def test_saves_and_rotation_never_delete_what_they_did_not_write(tmp_path):
    directory = tmp_path / "checkpoints"
    before = user_things(directory)
    model = Net()
    for step in (1, 2, 9, 10):
        save_checkpoint(directory, step, model=model, keep_last=1)
    after = snapshot(directory)
    assert {key: after.get(key, "gone") for key in before} == before
    assert latest_checkpoint(directory) == directory / "step_00000010"
    assert not (directory / "step_00000009").exists()


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        (3, "is a file"),
        (4, "holds files that a checkpoint does not"),
        (5, "is a folder without model.safetensors and trainer_state.pt"),
        (8, "is a symbolic link"),
    ],
)
def test_a_save_refuses_a_step_path_that_is_not_a_checkpoint(tmp_path, step, problem):
    directory = tmp_path / "checkpoints"
    before = user_things(directory)
    with pytest.raises(FileExistsError, match=f"step_{step:08d} {problem}"):
        save_checkpoint(directory, step, model=Net())
    assert snapshot(directory) == before
    with pytest.raises(FileExistsError, match=problem):
        check_replaceable(directory / f"step_{step:08d}")


def test_rotation_keeps_a_checkpoint_a_user_added_files_to(tmp_path, caplog):
    model = Net()
    save_checkpoint(tmp_path, 1, model=model)
    (tmp_path / "step_00000001" / "eval.json").write_text("{}")
    with caplog.at_level("WARNING", logger="unipercept.engine.checkpoint"):
        save_checkpoint(tmp_path, 2, model=model, keep_last=1)
    assert steps(tmp_path) == ["step_00000001", "step_00000002"]
    assert (tmp_path / "step_00000001" / "eval.json").read_text() == "{}"
    assert "step_00000001" in caplog.text and "eval.json" in caplog.text
