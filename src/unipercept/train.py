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

import torch
from omegaconf import DictConfig, OmegaConf

logger = logging.getLogger("unipercept.train")


class ConfigurationError(ValueError):
    """A training config that cannot run (reported as one line, exit code 2)."""


def _initial_weights(path: str | None) -> Path | None:
    """The checkpoint a stage starts from: a checkpoint folder, a folder of checkpoints (the
    newest is taken) or a .safetensors file."""
    if path is None:
        return None
    from unipercept.engine.checkpoint import latest_checkpoint

    candidate = Path(path)
    if candidate.is_file() and candidate.suffix == ".safetensors":
        return candidate
    if (candidate / "model.safetensors").is_file():
        return candidate
    if candidate.is_dir() and (found := latest_checkpoint(candidate)) is not None:
        return found
    raise ConfigurationError(
        f"stage.init_from: no checkpoint at {path} (give a checkpoint folder, a folder of "
        "checkpoints, or a .safetensors file; train the previous stage first)"
    )


def _check_schedule(stage: DictConfig) -> None:
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
    its 4-channel first convolution derives the prior channel from the 3-channel weights."""
    if "annotation" not in getattr(model, "prompt_encoders", {}):
        raise ConfigurationError(
            "stage.annotation_from_backbone: the model has no annotation encoder"
        )
    state = {
        k.removeprefix("backbone."): v
        for k, v in model.state_dict().items()
        if k.startswith("backbone.")
    }
    model.prompt_encoders["annotation"].backbone.load_state_dict(state, strict=False)


def run(cfg: DictConfig) -> Path:
    """Trains as ``cfg`` says; returns the output folder."""
    from unipercept.config import instantiate
    from unipercept.engine.batches import ExampleSettings, TrainingData
    from unipercept.engine.checkpoint import load_model_weights
    from unipercept.engine.distributed import cleanup, init_distributed
    from unipercept.engine.optim import parameter_groups, warmup_schedule
    from unipercept.engine.trainer import Trainer, TrainerSettings

    stage = cfg.stage
    _check_schedule(stage)
    initial = _initial_weights(stage.get("init_from"))  # before any work: fail fast
    output_dir = Path(cfg.output_dir)
    context = init_distributed(cfg.trainer.device)
    try:
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = instantiate(cfg.model)
        if initial is not None:
            load_model_weights(model, initial, strict=True)
            logger.info("initialised from %s", initial)
        if stage.get("annotation_from_backbone", False):
            _annotation_encoder_from_backbone(model)
        _freeze(model, list(stage.get("frozen", [])))
        if cfg.trainer.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.to(context.device)
        criterion = instantiate(cfg.criterion)
        mixture = stage.mixture
        datasets = {name: instantiate(spec) for name, spec in mixture.datasets.items()}
        settings = ExampleSettings(
            short_sizes=tuple(cfg.trainer.short_sizes),
            max_size=cfg.trainer.max_size,
            crop_probability=cfg.trainer.crop_probability,
            video_frames=stage.video_frames,
            pseudo_video=stage.pseudo_video,
            clip_window=stage.clip_window,
            template_gap=stage.template_gap,
        )
        data = TrainingData(
            datasets,
            dict(mixture.ratios),
            batch_size=cfg.trainer.batch_size,
            settings=settings,
            seed=cfg.seed,
            rank=context.rank,
            world_size=context.world_size,
        )
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
            trainer.resume()
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

    arguments = list(sys.argv[1:] if argv is None else argv)
    print_only = "--cfg" in arguments
    overrides = [a for a in arguments if a != "--cfg"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
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
