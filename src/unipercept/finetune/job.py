"""What ``run`` needs for a fine-tune, checked before any work: the starting model (``init``),
the user's data (``data.*``, read as ``finetune.format`` says), and the held-out scorer.

The architecture comes from ``init``, never from the ``model`` config group: the model folder's
or checkpoint's own config is built with the allow-listed builders of
:mod:`unipercept.modeling.pretrained` (a folder is data, not code), and ``cfg.model`` is set to
that config so that the run's checkpoints record the model they hold (``python -m
unipercept.export`` builds it again from there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from unipercept.data.spec import DatasetSpec
from unipercept.finetune.formats import FORMATS, Scorer
from unipercept.finetune.scoring import Resolution
from unipercept.train import ConfigurationError

logger = logging.getLogger(__name__)

# trainer.short_sizes null: the starting model's own short side and two smaller scales.
SCALES = (0.8, 0.9, 1.0)
# The preprocessor's defaults, for a model that records no resolution.
DEFAULT_RESOLUTION = {"short_size": 800, "max_size": 1333}
# A UNINEXT model's names for the parts the finetune stage freezes (the unipercept model's text
# encoder is under prompt_encoders).
UNINEXT_PARTS = {"prompt_encoders.category.text.model.": "text_encoder."}
_INIT_KINDS = (
    "a bundled model's name (unipercept-tiny), a model folder (save_pretrained, python -m "
    "unipercept.convert), a UNINEXT .pth, a training run folder or one of its checkpoint folders"
)


@dataclass
class Finetune:
    """A checked fine-tune.

    Attributes:
        model: the starting model, with its weights (``model.config`` its config).
        dataset: the training part of the user's data.
        metric: the held-out score's name (higher is better).
        resolution: the inference resolution the scorer runs the model at.
        summary: what trains and what is scored, for the log.
        data: the checked data (a :data:`~unipercept.finetune.formats.FORMATS` class), which
            builds the scorer.
    """

    model: nn.Module
    dataset: DatasetSpec
    metric: str
    resolution: Resolution
    summary: str
    data: Any

    def scorer(self) -> Scorer:
        """The held-out scorer; writes ``<output_dir>/finetune/`` (the split, and the held-out
        ground truth when it was split off).

        Raises:
            ConfigurationError: held-out data that cannot be read.
        """
        try:
            return self.data.scorer(self.resolution)
        except ConfigurationError:
            raise
        except (ValueError, OSError) as error:  # a reader's DatasetError names file and record
            raise ConfigurationError(f"held-out data: {_first_line(error)}") from None


def check(cfg: DictConfig) -> None:
    """What :func:`prepare` checks before it loads the model (a sweep's pre-flight can call
    it): the fine-tune's settings, that ``init`` names something, and the data.

    Raises:
        ConfigurationError: as :func:`prepare`, but for an ``init`` that turns out not to be a
            model only when it is loaded.
    """
    _checked(cfg)


def prepare(cfg: DictConfig) -> Finetune:
    """Checks a fine-tune's config and loads its starting model.

    Sets, in ``cfg``: ``model`` (the starting model's config), and ``trainer.short_sizes`` /
    ``trainer.max_size`` when null (the model's own resolution, :data:`SCALES` of its short
    side).

    Raises:
        ConfigurationError: an unknown ``finetune.format``; missing or unreadable data (a json
            that is not of the format, a missing folder, too few images to hold some out); an
            ``init`` that is not a model this library trains.
    """
    source, data = _checked(cfg)
    model = load_initial_model(source)
    _fit_to_model(cfg, model, source)
    cfg.model = OmegaConf.create(_plain(model.config))
    own = {**DEFAULT_RESOLUTION, **(getattr(model, "preprocess_settings", None) or {})}
    if cfg.trainer.short_sizes is None:
        cfg.trainer.short_sizes = sorted({round(own["short_size"] * s) for s in SCALES})
    if cfg.trainer.max_size is None:
        cfg.trainer.max_size = own["max_size"]
    resolution = Resolution(max(cfg.trainer.short_sizes), cfg.trainer.max_size)
    return Finetune(
        model=model,
        dataset=data.dataset(),
        metric=data.metric,
        resolution=resolution,
        summary=f"fine-tuning {source}: {data.summary}",
        data=data,
    )


def _checked(cfg: DictConfig) -> tuple[str, Any]:
    """``init`` as a loadable name or path, and the checked data."""
    settings = cfg.finetune
    kind = FORMATS.get(str(settings.format))
    if kind is None:
        raise ConfigurationError(
            f"finetune.format={settings.format}: not one of {', '.join(FORMATS)}"
        )
    if settings.eval_every < 1:
        raise ConfigurationError(f"finetune.eval_every must be >= 1, got {settings.eval_every}")
    source = _init_source(cfg.get("init"))
    return source, kind(cfg.data, Path(cfg.output_dir))


def _init_source(init: Any) -> str:
    """``init`` checked to name something: a bundled model or an existing path."""
    from unipercept.modeling.pretrained import bundled_models

    if init is None or str(init) == "":
        raise ConfigurationError(f"init: not given; a fine-tune starts from a model: {_INIT_KINDS}")
    source = str(init)
    if source in bundled_models():
        return source
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigurationError(
            f"init={source}: no such file or folder, nor a bundled model "
            f"({', '.join(bundled_models()) or 'none installed'})"
        )
    return str(path)


def _fit_to_model(cfg: DictConfig, model: nn.Module, source: str) -> None:
    """The criterion and frozen parts of the starting model's kind: a UNINEXT model trains with
    UNINEXT's losses (``criterion=uninext``) and its own module names."""
    from unipercept.config import config_dir
    from unipercept.modeling.uninext import Uninext

    target = str(cfg.criterion.get("_target_", ""))
    is_uninext_criterion = target.endswith("UninextCriterion")
    if not isinstance(model, Uninext):
        if is_uninext_criterion:
            raise ConfigurationError(
                f"criterion=uninext: UNINEXT's losses train UNINEXT models; init={source} is a "
                f"{type(model).__name__}"
            )
        return
    if int(cfg.stage.get("video_frames", 1)) > 1 and model.reid_head is None:
        raise ConfigurationError(
            f"stage.video_frames={cfg.stage.video_frames}: init={source} is a UNINEXT image "
            "model (no re-id head) and cannot train association on pairs of frames"
        )
    if not is_uninext_criterion:
        # Read as the file it is (no defaults list): composing would need a second Hydra inside
        # the running app.
        cfg.criterion = OmegaConf.load(config_dir() / "criterion" / "uninext.yaml")
    cfg.stage.frozen = [UNINEXT_PARTS.get(p, p) for p in cfg.stage.get("frozen") or []]
    cfg.stage.lr_multipliers = {
        UNINEXT_PARTS.get(p, p): v for p, v in (cfg.stage.get("lr_multipliers") or {}).items()
    }


def load_initial_model(source: str) -> nn.Module:
    """The model a fine-tune starts from, with its weights (``unipercept.load_model``: a
    folder's config is built from the allow-listed builders only).

    Raises:
        ConfigurationError: nothing loadable there (with the loader's reason), or a model that
            is not a prompt-driven unipercept model.
    """
    from unipercept import load_model
    from unipercept.modeling import UniPercept
    from unipercept.modeling.pretrained import PretrainedError
    from unipercept.modeling.uninext import Uninext

    try:
        model = load_model(source)
    except (PretrainedError, ValueError, OSError) as error:
        raise ConfigurationError(f"init={source}: {_first_line(error)}") from None
    if not isinstance(model, UniPercept | Uninext):
        raise ConfigurationError(
            f"init={source}: a {type(model).__name__}, not a prompt-driven unipercept or "
            "UNINEXT model (which fine-tuning trains)"
        )
    if getattr(model, "config", None) is None:
        raise ConfigurationError(f"init={source}: the model does not record its config")
    return model


def _plain(config: Any) -> Any:
    return (
        OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    )


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
