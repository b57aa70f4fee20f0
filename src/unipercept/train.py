"""``python -m unipercept.train stage=2_image_joint``: three-stage training, launched by Hydra.

One process per device: run it under ``torchrun`` for several GPUs or machines
(``torchrun --nproc_per_node 8 -m unipercept.train stage=...``); without torchrun it trains in
one process. Everything a run needs is in its config (``conf/train.yaml`` and the groups it
composes); problems with the config are reported before any work starts.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from collections.abc import Mapping

    from unipercept.data.spec import DatasetSpec
    from unipercept.engine.batches import TrainingData
    from unipercept.engine.distributed import DistributedContext
    from unipercept.finetune import Finetune

logger = logging.getLogger("unipercept.train")

# A stage's warmup_steps and milestones when null: a share of max_steps (conf/stage/finetune).
WARMUP_SHARE = 0.05
DROP_AT = 0.8


class ConfigurationError(ValueError):
    """A training config that cannot run (reported as one line, exit code 2)."""


def _newest_dated_run(path: Path) -> Path | None:
    """For a stage's default ``outputs/<stage>/checkpoints`` (or ``outputs/<stage>``) that does
    not exist: the newest checkpoint of a run of that stage in the app's dated run folders,
    ``outputs/<date>/<time>/`` (the name sorts by time), by the stage name in its
    ``.hydra/config.yaml``. None when the path has another shape or no such run exists."""
    import yaml

    from unipercept.engine.checkpoint import latest_checkpoint

    stage = path.parent if path.name == "checkpoints" else path
    root = stage.parent
    if path.exists() or not root.is_dir():
        return None
    for run in sorted(root.glob("*/*/.hydra/config.yaml"), reverse=True):
        try:
            config = yaml.safe_load(run.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(config, dict) or (config.get("stage") or {}).get("name") != stage.name:
            continue
        newest = latest_checkpoint(run.parent.parent / "checkpoints")
        if newest is not None:
            return newest
    return None


def _initial_weights(path: str | None) -> Path | None:
    """The checkpoint a stage starts from: a checkpoint folder, a folder of checkpoints or a
    training run's folder (the newest checkpoint is taken), or a .safetensors file; its file
    is checked to be whole."""
    if path is None:
        return None
    from unipercept.engine.checkpoint import CheckpointError, latest_checkpoint, weights_file

    candidate = Path(path)
    is_weights = candidate.is_file() and candidate.suffix == ".safetensors"
    if is_weights or (candidate / "model.safetensors").is_file():
        found = candidate
    elif candidate.is_dir() and (newest := latest_checkpoint(candidate)) is not None:
        found = newest
    elif (candidate / "checkpoints").is_dir() and (
        newest := latest_checkpoint(candidate / "checkpoints")
    ) is not None:
        found = newest  # a run's folder, as python -m unipercept.train writes it
    elif (dated := _newest_dated_run(candidate)) is not None:
        found = dated
        logger.info("stage.init_from: %s is not there; the newest run of that stage is", path)
        logger.info("  %s", found)
    else:
        raise ConfigurationError(
            f"stage.init_from: no checkpoint at {path}, nor a run of that stage under "
            f"{candidate.parent.parent if candidate.name == 'checkpoints' else candidate.parent}"
            "/<date>/<time> (give the previous stage's run folder, a checkpoint folder, a folder "
            "of checkpoints, or a .safetensors file; train the previous stage first)"
        )
    try:
        weights_file(found)
    except CheckpointError as error:
        raise ConfigurationError(f"stage.init_from: {error}") from error
    return found


def _load_initial_weights(model: torch.nn.Module, path: Path) -> None:
    """Loads ``stage.init_from`` into ``model``; every tensor must fit."""
    from unipercept.engine.checkpoint import CheckpointError, load_model_weights

    try:
        missing, unexpected = load_model_weights(model, path, strict=False)
    except (CheckpointError, RuntimeError) as error:
        raise ConfigurationError(f"stage.init_from: {path}: {_detail(error)}") from error
    if missing or unexpected:
        raise ConfigurationError(
            f"stage.init_from: {path} does not fit the model: {len(missing)} tensor(s) missing "
            f"({_some(missing)}), {len(unexpected)} unexpected ({_some(unexpected)})"
        )


def _check_device(device: str | None) -> None:
    """Fails on a ``trainer.device`` this machine does not have (None picks one itself)."""
    if device is None:
        return
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigurationError(
            f"trainer.device: {device!r} is not a device (give cpu, cuda or cuda:<n>)"
        ) from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError(
                f"trainer.device={device}: CUDA is not available on this machine; "
                "use trainer.device=cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ConfigurationError(
                f"trainer.device={device}: this machine has {torch.cuda.device_count()} "
                "CUDA device(s)"
            )
    elif resolved.type != "cpu":
        raise ConfigurationError(f"trainer.device={device}: only cpu and cuda are supported")


def _check_checkpoint_paths(directory: Path, stage: DictConfig, every: int) -> None:
    """Fails if something the library did not write sits where this run will save a
    checkpoint: it is never replaced, so the run would stop there."""
    from unipercept.engine.checkpoint import check_replaceable

    if not directory.is_dir():
        return
    for path in sorted(directory.glob("step_*")):
        step = path.name.removeprefix("step_")
        if not (step.isdigit() and len(step) >= 8):
            continue
        if int(step) <= stage.max_steps and (
            int(step) % every == 0 or int(step) == stage.max_steps
        ):
            try:
                check_replaceable(path)
            except FileExistsError as error:
                raise ConfigurationError(f"output_dir: {error}") from error


def _schedule(stage: DictConfig) -> tuple[int, list[int]]:
    """The stage's warmup steps and learning-rate drops; null ``warmup_steps`` is
    :data:`WARMUP_SHARE` of ``max_steps``, null ``milestones`` one drop at :data:`DROP_AT`."""
    warmup = stage.warmup_steps
    if warmup is None:
        warmup = int(WARMUP_SHARE * stage.max_steps)
    milestones = stage.get("milestones", [])
    if milestones is None:
        drop = int(DROP_AT * stage.max_steps)
        milestones = [drop] if 0 < drop < stage.max_steps else []
    return warmup, list(milestones)


def _check_schedule(stage: DictConfig, checkpoint_every: int) -> None:
    if checkpoint_every < 1:
        raise ConfigurationError(f"trainer.checkpoint_every must be >= 1, got {checkpoint_every}")
    if stage.max_steps < 1:
        raise ConfigurationError(f"stage.max_steps must be >= 1, got {stage.max_steps}")
    warmup, milestones = _schedule(stage)
    if not 0 <= warmup <= stage.max_steps:
        raise ConfigurationError(
            f"stage.warmup_steps ({warmup}) must be within [0, stage.max_steps={stage.max_steps}]"
        )
    late = [m for m in milestones if m >= stage.max_steps]
    if late:
        raise ConfigurationError(
            f"stage.milestones {late} are not before stage.max_steps ({stage.max_steps})"
        )


def _freeze(model: torch.nn.Module, prefixes: list[str]) -> None:
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ConfigurationError(
                f"stage.frozen: no parameter of the model starts with {prefix!r}"
            )
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            parameter.requires_grad_(False)


def _annotation_encoder_from_backbone(model: torch.nn.Module) -> None:
    """Starts the annotation encoder's backbone from the image backbone (UNINEXT's stage 3):
    its 4-channel first convolution derives the prior channel from the 3-channel weights.

    Raises:
        ConfigurationError: The model has no annotation encoder, or a tensor of either backbone
            has no counterpart in the other (named), or one arrived with other values.
    """
    encoders = getattr(model, "prompt_encoders", {})
    if "annotation" not in encoders:
        raise ConfigurationError(
            "stage.annotation_from_backbone: the model has no annotation encoder"
        )
    source = {
        key.removeprefix("backbone."): value.detach().clone()
        for key, value in model.state_dict().items()
        if key.startswith("backbone.")
    }
    target = encoders["annotation"].backbone
    try:
        missing, unexpected = target.load_state_dict(source, strict=False)
    except RuntimeError as error:  # shapes that even the prior-channel hook cannot adapt
        raise ConfigurationError(f"stage.annotation_from_backbone: {_detail(error)}") from None
    if missing or unexpected:
        raise ConfigurationError(
            "stage.annotation_from_backbone: the image backbone does not match the annotation "
            f"encoder's: {len(missing)} tensor(s) not loaded ({_some(missing)}), "
            f"{len(unexpected)} not used ({_some(unexpected)})"
        )
    # Checked rather than trusted: a hook may adapt or drop what load_state_dict reports loaded.
    for key, loaded in target.state_dict().items():
        expected = source[key]
        if loaded.dim() == 4 and expected.dim() == 4 and loaded.shape[1] == expected.shape[1] + 1:
            # The prior channel is the mean of the RGB filters (PriorConv2d).
            expected = torch.cat([expected, expected.mean(1, keepdim=True)], 1)
        if loaded.shape != expected.shape or not torch.equal(loaded, expected.to(loaded)):
            raise ConfigurationError(
                f"stage.annotation_from_backbone: {key} did not load the image backbone's values"
            )


def _detail(error: Exception) -> str:
    from unipercept.engine.checkpoint import load_error_line

    return load_error_line(error)


def _some(names: list[str], limit: int = 3) -> str:
    from unipercept.engine.checkpoint import some_names

    return some_names(names, limit)


def _training_data(
    cfg: DictConfig, context: DistributedContext, extra: Mapping[str, DatasetSpec] | None = None
) -> TrainingData:
    """Reads the stage's mixture, and ``extra`` datasets (a fine-tune's, each at ratio 1); a
    dataset that cannot be read is a configuration error."""
    from unipercept.config import instantiate
    from unipercept.engine.batches import ExampleSettings, TrainingData

    stage = cfg.stage
    settings = ExampleSettings(
        short_sizes=tuple(cfg.trainer.short_sizes),
        max_size=cfg.trainer.max_size,
        crop_probability=cfg.trainer.crop_probability,
        video_frames=stage.video_frames,
        pseudo_video=stage.pseudo_video,
        clip_window=stage.clip_window,
        template_gap=stage.template_gap,
        absent_probability=stage.get("annotation_absent", 0.0),
        mask_prior_probability=stage.get("annotation_mask_prior", 0.0),
        search_min_fraction=stage.get("search_min_fraction", 0.5),
    )
    try:
        datasets = {name: instantiate(spec) for name, spec in stage.mixture.datasets.items()}
        ratios = dict(stage.mixture.ratios)
        for name, spec in (extra or {}).items():
            datasets[name], ratios[name] = spec, 1.0
        return TrainingData(
            datasets,
            ratios,
            batch_size=cfg.trainer.batch_size,
            settings=settings,
            seed=cfg.seed,
            rank=context.rank,
            world_size=context.world_size,
        )
    # Readers raise DatasetError (a ValueError) naming the file and record; a missing file or
    # folder (UNIPERCEPT_DATA or a root override pointing nowhere) is one of them.
    except (ValueError, OSError) as error:
        raise ConfigurationError(f"stage.mixture: {error}") from error


def _check_model_option(cfg: DictConfig) -> None:
    """model=from_init (conf/model/from_init.yaml) only with a fine-tune, whose ``init`` holds
    the architecture."""
    if cfg.get("finetune") is None and "from_init" in (cfg.get("model") or {}):
        raise ConfigurationError(
            "model=from_init: only a fine-tune (finetune=coco|refcoco|ytvis|mot) takes its "
            "architecture from init; a training stage needs a model option (model=unipercept, "
            "unipercept_tiny, ...)"
        )


def _finetune(cfg: DictConfig, checkpoints: Path) -> Finetune | None:
    """The checked fine-tune of ``finetune=...`` (None for a training stage); ``init`` is only
    for a fine-tune."""
    _check_model_option(cfg)
    if cfg.get("finetune") is None:
        if cfg.get("init") is not None:
            raise ConfigurationError(
                "init: only a fine-tune (finetune=coco|refcoco|ytvis|mot) starts from a model; "
                "a training stage starts from stage.init_from"
            )
        return None
    from unipercept.engine.best import BEST_DIR
    from unipercept.engine.checkpoint import check_replaceable
    from unipercept.finetune import prepare

    try:
        check_replaceable(checkpoints / BEST_DIR)
    except FileExistsError as error:
        raise ConfigurationError(f"output_dir: {error}") from error
    return prepare(cfg)


def _main_rank_only(model: torch.nn.Module) -> float:
    """The evaluator of ranks other than 0, never called: the trainer scores on rank 0 only
    (which writes the held-out files) and sends the score to the others."""
    raise AssertionError("only rank 0 evaluates")


def run(cfg: DictConfig) -> Path:
    """Trains as ``cfg`` says; returns the output folder."""
    from unipercept.config import instantiate
    from unipercept.engine.checkpoint import CheckpointError
    from unipercept.engine.distributed import cleanup, init_distributed
    from unipercept.engine.optim import parameter_groups, warmup_schedule
    from unipercept.engine.trainer import Trainer, TrainerSettings

    stage = cfg.stage
    _check_schedule(stage, cfg.trainer.checkpoint_every)
    stage.warmup_steps, stage.milestones = _schedule(stage)  # recorded as numbers
    # Everything the user can get wrong is checked before any work: the model, the data and
    # the process group all take a while to build.
    initial = _initial_weights(stage.get("init_from"))
    _check_device(cfg.trainer.device)
    output_dir = Path(cfg.output_dir)
    _check_checkpoint_paths(output_dir / "checkpoints", stage, cfg.trainer.checkpoint_every)
    finetune = _finetune(cfg, output_dir / "checkpoints")
    try:
        context = init_distributed(cfg.trainer.device)
    except ValueError as error:  # torchrun's environment variables
        raise ConfigurationError(str(error)) from error
    try:
        extra = {finetune.dataset.name: finetune.dataset} if finetune is not None else None
        data = _training_data(cfg, context, extra)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = instantiate(cfg.model) if finetune is None else finetune.model
        scorer = None
        if finetune is not None:
            scorer = finetune.scorer() if context.is_main else _main_rank_only
            logger.info("%s", finetune.summary)
        if initial is not None:
            _load_initial_weights(model, initial)
            logger.info("initialised from %s", initial)
        if stage.get("annotation_from_backbone", False):
            _annotation_encoder_from_backbone(model)
        _freeze(model, list(stage.get("frozen", [])))
        if cfg.trainer.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.to(context.device)
        criterion = instantiate(cfg.criterion)
        optimizer_factory = instantiate(cfg.optim.optimizer)
        groups = parameter_groups(
            model,
            base_lr=stage.lr,
            weight_decay=cfg.optim.optimizer.weight_decay,
            lr_multipliers=dict(stage.get("lr_multipliers", {})),
        )
        optimizer = optimizer_factory(groups)
        scheduler = warmup_schedule(
            optimizer,
            total_steps=stage.max_steps,
            warmup_steps=stage.warmup_steps,
            kind=stage.schedule,
            milestones=list(stage.get("milestones", [])),
        )
        trainer = Trainer(
            model=model,
            criterion=criterion,
            data=data,
            optimizer=optimizer,
            scheduler=scheduler,
            context=context,
            output_dir=output_dir,
            settings=TrainerSettings(
                max_steps=stage.max_steps,
                checkpoint_every=cfg.trainer.checkpoint_every,
                keep_last=cfg.trainer.keep_last,
                log_every=cfg.trainer.log_every,
                clip_grad_norm=cfg.trainer.clip_grad_norm,
                max_nonfinite=cfg.trainer.max_nonfinite,
                bf16=cfg.trainer.bf16,
                embedding_weight=stage.embedding_weight,
                progress=cfg.trainer.progress,
                eval_every=cfg.finetune.eval_every if finetune is not None else 0,
                eval_metric=finetune.metric if finetune is not None else "score",
            ),
            config_text=OmegaConf.to_yaml(cfg, resolve=True),
            evaluator=scorer,
        )
        if cfg.resume:
            try:
                trainer.resume()
            except CheckpointError as error:
                raise ConfigurationError(f"resume: {error}") from error
        trainer.train()
    finally:
        cleanup(context)
    return output_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m unipercept.train``: the Hydra app (:mod:`unipercept.train_app`) with ``argv``
    (``sys.argv[1:]`` by default) as its command line.

    ``--help`` lists the config groups, ``--cfg job`` prints the composed config, ``-m`` sweeps.
    Config errors (an unknown stage, a key that does not exist, a missing initial checkpoint, in
    a sweep any job's) exit with code 2 and one line, before any work.

    Returns:
        The exit code.
    """
    from unipercept.train_app import main as app_main

    return app_main(argv)


if __name__ == "__main__":
    sys.exit(main())
