"""The training loop: one process per device under torchrun, exact resume, a guard against
non-finite losses, checkpoints that survive a kill, and (given an evaluator) a score every
``eval_every`` steps with the best checkpoint kept in ``checkpoints/best``."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from unipercept.criterion import UninextCriterion, UniPerceptCriterion, total_loss
from unipercept.engine.batches import TrainingBatch, TrainingData
from unipercept.engine.best import BestScore, is_better, save_best
from unipercept.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_newest_checkpoint,
    save_checkpoint,
)
from unipercept.engine.distributed import (
    DistributedContext,
    barrier,
    broadcast_object,
    reduce_mean,
)
from unipercept.engine.rng import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerSettings:
    """Attributes:
    max_steps: optimiser steps of the whole run.
    checkpoint_every, keep_last: checkpoint cadence and how many to keep.
    log_every: console/TensorBoard cadence.
    clip_grad_norm: max gradient norm (0 disables clipping).
    max_nonfinite: stop after this many steps skipped for a non-finite loss.
    bf16: autocast to bfloat16 on CUDA (ignored on CPU).
    embedding_weight: weight of the association loss on two-frame batches.
    progress: show a progress bar (main rank only).
    eval_every: steps between calls of the trainer's evaluator (also before the first step
        and after the last); 0 never calls it.
    eval_metric: the name of the evaluator's score (higher is better) in logs and best.json.
    """

    max_steps: int
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 20
    clip_grad_norm: float = 0.1
    max_nonfinite: int = 10
    bf16: bool = True
    embedding_weight: float = 0.25
    progress: bool = True
    eval_every: int = 0
    eval_metric: str = "score"


class TrainingStep(nn.Module):
    """The model and its criterion as one module whose forward returns the losses.

    DistributedDataParallel wraps this, not the bare model: it looks for unused parameters
    from the forward's outputs, so the outputs must be exactly what the loss is made of (the
    model's other outputs, such as embeddings in an image batch, would otherwise make it wait
    for gradients that never come).
    """

    def __init__(
        self, model: nn.Module, criterion: UniPerceptCriterion, embedding_weight: float
    ) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.embedding_weight = embedding_weight

    def forward(self, batch: TrainingBatch) -> dict[str, Tensor]:
        outputs = self.model(batch.images, batch.prompts)
        losses = self.criterion(outputs, batch.targets, batch.images)
        if batch.reference_images is not None:
            reference = self.model(batch.reference_images, batch.prompts)
            for name, value in self.criterion(
                reference, batch.reference_targets, batch.reference_images
            ).items():
                losses[f"{name}.ref"] = value
            if self.embedding_weight > 0:
                losses.update(
                    self.criterion.embedding_loss(
                        outputs, batch.targets, reference, batch.reference_targets
                    )
                )
        return losses


class UninextTrainingStep(nn.Module):
    """A UNINEXT model and :class:`~unipercept.criterion.UninextCriterion` as one module (see
    :class:`TrainingStep`): prompts encoded as UNINEXT trains on them, every layer's losses on
    the key frames, and with reference frames, UNINEXT's re-id losses.
    """

    def __init__(self, model: nn.Module, criterion: UninextCriterion) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, batch: TrainingBatch) -> dict[str, Tensor]:
        from unipercept.modeling.uninext.training import (
            encode_training_prompts,
            reference_outputs,
            training_outputs,
        )

        prompts = encode_training_prompts(self.model, batch.prompts)
        paired = batch.reference_images is not None
        outputs = training_outputs(self.model, batch.images, prompts, with_embeddings=paired)
        reference = (
            reference_outputs(self.model, batch.reference_images, prompts) if paired else None
        )
        return self.criterion(
            outputs, batch.targets, prompts.positive, reference, batch.reference_targets
        )


class NonFiniteLossError(RuntimeError):
    """Raised after too many steps with a NaN or infinite loss."""


class EvaluationError(RuntimeError):
    """The evaluator failed on the main rank (raised on every rank, so none waits forever)."""


class Trainer:
    """Trains a model on :class:`TrainingData` batches.

    Args:
        model: the model (wrapped in DistributedDataParallel here when distributed).
        criterion: its losses (unweighted; weighted by ``criterion.weight_dict`` here, once).
        data: the batches.
        optimizer, scheduler: built on ``model``'s parameters.
        context: this process's place in the job.
        output_dir: checkpoints and TensorBoard logs go here.
        settings: the loop's knobs.
        config_text: the resolved configuration, saved with every checkpoint.
        evaluator: scores the model (higher is better), called on the main rank in eval mode
            and without gradients every ``settings.eval_every`` steps, before the first step
            (the starting model's score) and after the last; the best-scoring step is kept in
            ``checkpoints/best`` (:mod:`unipercept.engine.best`). Its random draws do not
            touch the training's random state.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        criterion: UniPerceptCriterion | UninextCriterion,
        data: TrainingData,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        context: DistributedContext,
        output_dir: Path,
        settings: TrainerSettings,
        config_text: str | None = None,
        evaluator: Callable[[nn.Module], float] | None = None,
    ) -> None:
        self.model = model
        self.criterion = criterion.to(context.device)
        self.data = data
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.context = context
        self.output_dir = Path(output_dir)
        self.settings = settings
        self.config_text = config_text
        self.evaluator = evaluator if settings.eval_every > 0 else None
        self.step = 0
        self.nonfinite = 0
        self.best: BestScore | None = None
        self.initial_score: float | None = None
        self._writer = None
        self.module: nn.Module = (
            UninextTrainingStep(model, self.criterion)
            if isinstance(self.criterion, UninextCriterion)
            else TrainingStep(model, self.criterion, settings.embedding_weight)
        )
        if context.distributed:
            # Batches of different prompt kinds use different encoders and heads: parameters
            # unused in a step must not stall the gradient all-reduce.
            self.module = nn.parallel.DistributedDataParallel(
                self.module,
                device_ids=[context.device.index] if context.device.type == "cuda" else None,
                find_unused_parameters=True,
            )

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoints"

    def resume(self) -> bool:
        """Loads the newest readable checkpoint of :attr:`checkpoint_dir`, if any.

        The main rank picks it, skipping (with a warning) and setting aside newer ones that
        cannot be read, as :func:`load_newest_checkpoint` does; the other ranks then load the
        one it picked, so every rank resumes from the same step.

        Returns:
            True when a checkpoint was loaded, False when there is none.

        Raises:
            CheckpointError: There are checkpoints but none can be read.
        """
        found, failure = None, None
        if self.context.is_main:
            try:
                found = load_newest_checkpoint(
                    self.checkpoint_dir,
                    model=self.model,
                    optimizer=self.optimizer,
                    scheduler=self.scheduler,
                )
            except Exception as error:  # re-raised below, once the other ranks know
                failure = error
        # Sent even when the main rank failed, so that the other ranks stop instead of waiting.
        chosen, problem = broadcast_object(
            (str(found[0]) if found else None, None if failure is None else str(failure)),
            self.context,
        )
        if failure is not None:
            raise failure
        if problem is not None:
            raise CheckpointError(f"rank 0 could not resume: {problem}")
        if chosen is None:
            return False
        path = Path(chosen)
        if found is not None:
            extra = found[1]
        else:
            extra = load_checkpoint(
                path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
            )
        self.step = int(extra["step"])
        self.nonfinite = int(extra["nonfinite"])
        evaluation = extra.get("evaluation") or {}
        self.initial_score = evaluation.get("initial")
        self.best = BestScore.from_dict(evaluation["best"]) if evaluation.get("best") else None
        self.data.sampler.load_state_dict(extra["sampler"])
        restore_rng_state(
            extra["rng"][self.context.rank]
            if self.context.rank < len(extra["rng"])
            else extra["rng"][0]
        )
        logger.info("resumed from %s at step %d", path, self.step)
        return True

    def _to_device(self, batch: TrainingBatch) -> TrainingBatch:
        device = self.context.device
        moved = {
            "images": batch.images.to(device),
            "targets": [t.to(device) for t in batch.targets],
        }
        if batch.reference_images is not None:
            moved["reference_images"] = batch.reference_images.to(device)
            moved["reference_targets"] = [t.to(device) for t in batch.reference_targets]
        return dataclasses.replace(batch, **moved)

    def _losses(self, batch: TrainingBatch) -> dict[str, Tensor]:
        use_bf16 = self.settings.bf16 and self.context.device.type == "cuda"
        with torch.autocast(self.context.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            return self.module(batch)

    def train(self, on_step: Callable[[int, Mapping[str, float]], None] | None = None) -> None:
        """Runs from :attr:`step` to ``settings.max_steps``."""
        settings = self.settings
        writer = self._writer = self._summary_writer()
        if self.evaluator is not None and self.step == 0:
            self.initial_score = self._evaluate()
        bar = tqdm(
            total=settings.max_steps,
            initial=self.step,
            desc="train",
            disable=not (settings.progress and self.context.is_main),
            dynamic_ncols=True,
        )
        self.module.train()
        started = time.monotonic()
        while self.step < settings.max_steps:
            batch = self._to_device(self.data.batch_at(self.step))
            losses = self._losses(batch)
            loss = total_loss(losses, self.criterion.weight_dict)
            # Every rank must agree to skip, or the gradient all-reduce would hang.
            finite = reduce_mean(torch.isfinite(loss).float().detach(), self.context) == 1.0
            self.optimizer.zero_grad(set_to_none=True)
            if not bool(finite):
                self.nonfinite += 1
                logger.warning(
                    "step %d: non-finite loss (%s), skipped (%d so far)",
                    self.step,
                    batch.dataset,
                    self.nonfinite,
                )
                if self.nonfinite > settings.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{self.nonfinite} steps had a non-finite loss; "
                        f"the last on dataset {batch.dataset} at step {self.step}"
                    )
            else:
                loss.backward()
                if settings.clip_grad_norm > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), settings.clip_grad_norm)
                self.optimizer.step()
            with warnings.catch_warnings():
                # A skipped step still advances the schedule, which stays aligned with the step
                # count (and with the batches, which never repeat); torch warns about that order.
                warnings.filterwarnings(
                    "ignore", message="Detected call of `lr_scheduler.step", category=UserWarning
                )
                self.scheduler.step()
            self.step += 1
            bar.update(1)
            if self.step % settings.log_every == 0 or self.step == settings.max_steps:
                self._log(losses, loss, batch, writer, started, bar)
            if on_step is not None:
                on_step(self.step, {k: float(v.detach()) for k, v in losses.items()})
            if self.evaluator is not None and (
                self.step % settings.eval_every == 0 or self.step == settings.max_steps
            ):
                # Before the step's checkpoint, which then records the best score so far.
                self._keep_if_best(self._evaluate())
            if self.step % settings.checkpoint_every == 0 or self.step == settings.max_steps:
                self.save()
        bar.close()
        if writer is not None:
            writer.close()
        self._writer = None
        self._report_best()

    def save(self) -> Path | None:
        """Writes a checkpoint of the current step (main rank writes; every rank's RNG state
        goes in it so each continues its own stream)."""
        states = self._gather_rng_states()
        path = None
        if self.context.is_main:
            extra = {
                "step": self.step,
                "nonfinite": self.nonfinite,
                "sampler": self.data.sampler.state_dict(),
                "rng": states,
                "evaluation": self._evaluation_state(),
            }
            path = save_checkpoint(
                self.checkpoint_dir,
                self.step,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                extra=extra,
                config_text=self.config_text,
                keep_last=self.settings.keep_last,
            )
        barrier(self.context)
        return path

    def _evaluation_state(self) -> dict:
        return {
            "initial": self.initial_score,
            "best": self.best.to_dict() if self.best is not None else None,
        }

    def _evaluate(self) -> float:
        """The evaluator's score of the model now, on every rank (the main rank computes it)."""
        value, failure = None, None
        if self.context.is_main:
            devices = [self.context.device] if self.context.device.type == "cuda" else []
            self.model.eval()
            try:
                with torch.random.fork_rng(devices=devices), torch.no_grad():
                    value = float(self.evaluator(self.model))
            except Exception as error:  # re-raised below, once the other ranks know
                failure = error
            finally:
                self.module.train()
        value, problem = broadcast_object(
            (value, None if failure is None else f"{type(failure).__name__}: {failure}"),
            self.context,
        )
        if failure is not None:
            raise failure
        if problem is not None:
            raise EvaluationError(f"evaluation at step {self.step} failed on rank 0: {problem}")
        metric = self.settings.eval_metric
        if self.context.is_main:
            logger.info("step %d: held-out %s %.4f", self.step, metric, value)
            if self._writer is not None and math.isfinite(value):
                self._writer.add_scalar(f"eval/{metric}", value, self.step)
        return value

    def _keep_if_best(self, value: float) -> None:
        """Makes this step ``checkpoints/best`` when ``value`` beats the best so far."""
        if not math.isfinite(value):
            logger.warning(
                "step %d: the evaluator gave %s; not a best checkpoint", self.step, value
            )
            return
        if not is_better(value, self.best):
            return
        self.best = BestScore(self.step, self.settings.eval_metric, value)
        if self.context.is_main:
            extra = {
                "step": self.step,
                "nonfinite": self.nonfinite,
                "evaluation": self._evaluation_state(),
            }
            path = save_best(
                self.checkpoint_dir,
                self.best,
                model=self.model,
                extra=extra,
                config_text=self.config_text,
                initial=self.initial_score,
            )
            logger.info("step %d: best %s so far, kept in %s", self.step, self.best.metric, path)
        barrier(self.context)

    def _report_best(self) -> None:
        if self.best is None or not self.context.is_main:
            return
        best, initial = self.best, self.initial_score
        if initial is not None and math.isfinite(initial) and best.value <= initial:
            logger.warning(
                "no trained step beat the starting model's %s (%.4f); checkpoints/best holds "
                "the best trained step (%d, %.4f)",
                best.metric,
                initial,
                best.step,
                best.value,
            )
        else:
            logger.info("best %s %.4f at step %d", best.metric, best.value, best.step)

    def _gather_rng_states(self) -> list:
        state = capture_rng_state()
        if not self.context.distributed:
            return [state]
        gathered: list = [None] * self.context.world_size
        torch.distributed.all_gather_object(gathered, state)
        return gathered

    def _summary_writer(self):
        if not self.context.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed: logging to the console only")
            return None
        return SummaryWriter(log_dir=str(self.output_dir / "tensorboard"), purge_step=self.step)

    def _log(
        self,
        losses: Mapping[str, Tensor],
        loss: Tensor,
        batch: TrainingBatch,
        writer,
        started: float,
        bar: tqdm,
    ) -> None:
        averaged = {
            k: float(reduce_mean(v.detach().float(), self.context))
            for k, v in losses.items()
            if "." not in k
        }
        total = float(reduce_mean(loss.detach().float(), self.context))
        if not self.context.is_main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{total:.3f}", lr=f"{lr:.2e}", data=batch.dataset)
        if writer is not None:
            writer.add_scalar("loss/total", total, self.step)
            writer.add_scalar("lr", lr, self.step)
            for name, value in averaged.items():
                if math.isfinite(value):
                    writer.add_scalar(f"loss/{name}", value, self.step)
        logger.info(
            "step %d/%d loss %.4f lr %.2e (%s) %.1fs",
            self.step,
            self.settings.max_steps,
            total,
            lr,
            batch.dataset,
            time.monotonic() - started,
        )
