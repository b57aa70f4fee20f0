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
    from unipercept.engine.batches import TrainingData
    from unipercept.engine.distributed import DistributedContext

logger = logging.getLogger("unipercept.train")


class ConfigurationError(ValueError):
    """A training config that cannot run (reported as one line, exit code 2)."""


def _initial_weights(path: str | None) -> Path | None:
    """The checkpoint a stage starts from: a checkpoint folder, a folder of checkpoints (the
    newest is taken) or a .safetensors file; its file is checked to be whole."""
    if path is None:
        return None
    from unipercept.engine.checkpoint import CheckpointError, latest_checkpoint, weights_file

    candidate = Path(path)
    is_weights = candidate.is_file() and candidate.suffix == ".safetensors"
    if is_weights or (candidate / "model.safetensors").is_file():
        found = candidate
    elif candidate.is_dir() and (newest := latest_checkpoint(candidate)) is not None:
        found = newest
    else:
        raise ConfigurationError(
            f"stage.init_from: no checkpoint at {path} (give a checkpoint folder, a folder of "
            "checkpoints, or a .safetensors file; train the previous stage first)"
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


def _check_schedule(stage: DictConfig, checkpoint_every: int) -> None:
    if checkpoint_every < 1:
        raise ConfigurationError(f"trainer.checkpoint_every must be >= 1, got {checkpoint_every}")
    if stage.max_steps < 1:
        raise ConfigurationError(f"stage.max_steps must be >= 1, got {stage.max_steps}")
    if not 0 <= stage.warmup_steps <= stage.max_steps:
        raise ConfigurationError(
            f"stage.warmup_steps ({stage.warmup_steps}) must be within "
            f"[0, stage.max_steps={stage.max_steps}]"
        )
    late = [m for m in stage.get("milestones", []) if m >= stage.max_steps]
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
    """One line of an error: load_state_dict's first line only says "Error(s) in loading
    state_dict", its second names the tensor."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]


def _some(names: list[str], limit: int = 3) -> str:
    """Up to ``limit`` names, and how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _training_data(cfg: DictConfig, context: DistributedContext) -> TrainingData:
    """Reads the stage's mixture; a dataset that cannot be read is a configuration error."""
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
        return TrainingData(
            datasets,
            dict(stage.mixture.ratios),
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


def run(cfg: DictConfig) -> Path:
    """Trains as ``cfg`` says; returns the output folder."""
    from unipercept.config import instantiate
    from unipercept.engine.checkpoint import CheckpointError
    from unipercept.engine.distributed import cleanup, init_distributed
    from unipercept.engine.optim import parameter_groups, warmup_schedule
    from unipercept.engine.trainer import Trainer, TrainerSettings

    stage = cfg.stage
    _check_schedule(stage, cfg.trainer.checkpoint_every)
    # Everything the user can get wrong is checked before any work: the model, the data and
    # the process group all take a while to build.
    initial = _initial_weights(stage.get("init_from"))
    _check_device(cfg.trainer.device)
    output_dir = Path(cfg.output_dir)
    _check_checkpoint_paths(output_dir / "checkpoints", stage, cfg.trainer.checkpoint_every)
    try:
        context = init_distributed(cfg.trainer.device)
    except ValueError as error:  # torchrun's environment variables
        raise ConfigurationError(str(error)) from error
    try:
        data = _training_data(cfg, context)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = instantiate(cfg.model)
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
            ),
            config_text=OmegaConf.to_yaml(cfg, resolve=True),
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
    """Composes ``conf/train.yaml`` with the command line's Hydra overrides and trains.

    ``--cfg`` prints the composed config instead of training. Config errors (an unknown stage,
    a key that does not exist, a missing initial checkpoint) exit with code 2 and one line.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from unipercept.config import compose
    from unipercept.entry import shadowed_package

    arguments = list(sys.argv[1:] if argv is None else argv)
    print_only = "--cfg" in arguments
    overrides = [a for a in arguments if a != "--cfg"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (problem := shadowed_package()) is not None:
        logger.error("error: %s", problem)
        return 2
    try:
        cfg = compose("train", overrides)
        if print_only:  # the composed config is this command's output
            sys.stdout.write(OmegaConf.to_yaml(cfg))
            return 0
        OmegaConf.resolve(cfg)  # interpolation errors surface now, before any work
        run(cfg)
    except (ConfigurationError, HydraException, OmegaConfBaseException) as error:
        logger.error("error: %s", str(error).strip().splitlines()[0])
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
