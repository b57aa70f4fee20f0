"""The trainer's guard against non-finite losses, and its logs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from unipercept import config
from unipercept.criterion import HungarianMatcher, UniPerceptCriterion
from unipercept.data.synthetic import generate
from unipercept.engine.batches import ExampleSettings, TrainingData
from unipercept.engine.checkpoint import latest_checkpoint, load_checkpoint
from unipercept.engine.distributed import init_distributed
from unipercept.engine.optim import warmup_schedule
from unipercept.engine.trainer import NonFiniteLossError, Trainer, TrainerSettings

from ..modeling.tiny import tiny_unipercept


class PoisonedCriterion(UniPerceptCriterion):
    """Returns a NaN loss on the chosen steps."""

    def __init__(self, poisoned: set[int]) -> None:
        super().__init__(matcher=HungarianMatcher())
        self.poisoned = poisoned
        self.calls = 0

    def forward(self, outputs, targets, images=None):
        losses = super().forward(outputs, targets, images)
        if self.calls in self.poisoned:
            losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        self.calls += 1
        return losses


@pytest.fixture(scope="module")
def data(tmp_path_factory, monkeypatch_module=None):
    root = tmp_path_factory.mktemp("data")
    generate(root / "synthetic", seed=1, size="small")
    import os

    os.environ["UNIPERCEPT_DATA"] = str(root)
    try:
        spec = config.instantiate(config.compose_group_option("data", "synthetic_coco"))
        return TrainingData(
            {"coco": spec},
            {"coco": 1.0},
            batch_size=1,
            settings=ExampleSettings(short_sizes=(96,), max_size=128),
        )
    finally:
        del os.environ["UNIPERCEPT_DATA"]


def make_trainer(
    data, criterion, tmp_path, steps: int, max_nonfinite: int, checkpoint_every: int | None = None
) -> Trainer:
    torch.manual_seed(0)
    model = tiny_unipercept()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return Trainer(
        model=model,
        criterion=criterion,
        data=data,
        optimizer=optimizer,
        scheduler=warmup_schedule(optimizer, total_steps=steps),
        context=init_distributed("cpu"),
        output_dir=tmp_path,
        settings=TrainerSettings(
            max_steps=steps,
            checkpoint_every=checkpoint_every or steps,
            log_every=1,
            max_nonfinite=max_nonfinite,
            progress=False,
        ),
    )


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(data, tmp_path):
    trainer = make_trainer(data, PoisonedCriterion({1}), tmp_path / "one", steps=3, max_nonfinite=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    seen = []
    trainer.train(on_step=lambda step, losses: seen.append(step))
    assert trainer.nonfinite == 1 and seen == [1, 2, 3]
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    # TensorBoard events were written next to the checkpoints.
    assert list((tmp_path / "one" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "one" / "checkpoints" / "step_00000003").is_dir()

    stubborn = make_trainer(
        data, PoisonedCriterion({0, 1, 2, 3}), tmp_path / "two", steps=6, max_nonfinite=2
    )
    with pytest.raises(NonFiniteLossError, match="3 steps had a non-finite loss"):
        stubborn.train()


@pytest.mark.parametrize("damaged_file", ["model.safetensors", "trainer_state.pt"])
def test_resume_falls_back_past_a_truncated_newest_checkpoint(data, tmp_path, caplog, damaged_file):
    def trainer(steps: int) -> Trainer:
        criterion = UniPerceptCriterion(matcher=HungarianMatcher())
        return make_trainer(data, criterion, tmp_path, steps, max_nonfinite=0, checkpoint_every=1)

    trainer(2).train()
    checkpoints = tmp_path / "checkpoints"
    first = load_file(str(checkpoints / "step_00000001" / "model.safetensors"))
    damaged = checkpoints / "step_00000002" / damaged_file
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    left = damaged.read_bytes()

    resumed = trainer(3)
    with caplog.at_level("WARNING"):
        assert resumed.resume()
    assert resumed.step == 1
    for name, value in resumed.model.state_dict().items():
        if name in first:
            torch.testing.assert_close(value, first[name], msg=name)
    assert "step_00000002" in caplog.text and damaged_file in caplog.text, caplog.text
    # The damaged checkpoint is kept as it was; training on rewrites step 2 from scratch.
    resumed.train()
    assert (checkpoints / "step_00000002.damaged" / damaged_file).read_bytes() == left
    assert latest_checkpoint(checkpoints) == checkpoints / "step_00000003"
    load_checkpoint(checkpoints / "step_00000002", model=tiny_unipercept())
