"""The model that ``--images`` and ``--data`` run: a bundled or saved model, a training run
or checkpoint, or a ``conf/model`` option with a checkpoint's weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unipercept.api import Predictor

logger = logging.getLogger(__name__)


def build_predictor(
    model_name: str, weights: Path | None, short_size: int | None, max_size: int | None
) -> Predictor:
    """A Predictor for ``model_name``: a bundled model ("unipercept-tiny"), a save_pretrained
    folder, or a training run, its ``checkpoints/`` folder or one checkpoint folder (the model
    its config builds, at the training resolution), at its own resolution unless sizes are
    given; or a ``conf/model`` option built with ``weights`` loaded (at 800/1333 unless given).

    A UNINEXT model runs at its own image and video resolutions
    (``Uninext.default_preprocess``); ``short_size``/``max_size`` then set one resolution for
    images and videos alike (a missing one keeps the image setting)."""
    from unipercept import config
    from unipercept.api import Predictor, is_uninext
    from unipercept.data.preprocess import ImagePreprocessor
    from unipercept.evaluate.baselines import BASELINES, CopyFirstPredictor
    from unipercept.export import is_checkpoint_source, load_model
    from unipercept.modeling.pretrained import META_FILE, bundled_models

    if model_name in BASELINES:
        return CopyFirstPredictor()  # type: ignore[return-value]

    path = Path(model_name)
    checkpoint = path.suffix in (".pth", ".pt") and path.is_file()
    options = [n.split("/", 1)[1] for n in config.list_configs() if n.startswith("model/")]
    # A conf/model name wins over a folder of the same name in the working directory.
    run = model_name not in options and is_checkpoint_source(model_name)
    if model_name in bundled_models() or (path / META_FILE).is_file() or checkpoint or run:
        if weights is not None:
            raise ValueError(
                f"--weights is for a conf/model name; {model_name} is a model (or training "
                "checkpoint) with its own weights"
            )
        model = load_model(model_name)
        settings = {**model.preprocess_settings}
    else:
        if model_name not in options:
            raise ValueError(
                f"--model {model_name}: not a bundled model ({', '.join(bundled_models())}), "
                "a save_pretrained folder, a UNINEXT .pth, a training run or checkpoint "
                f"folder, nor a conf/model option ({', '.join(options)})"
            )
        model = config.instantiate(config.compose_group_option("model", model_name))
        if weights is not None:
            from unipercept.engine.checkpoint import load_model_weights

            load_model_weights(model, weights)
        else:
            logger.warning("warning: no --weights: the model's weights are as built")
        settings = {}
    if is_uninext(model):
        return uninext_predictor(model, short_size, max_size)
    if short_size is not None:
        settings["short_size"] = short_size
    if max_size is not None:
        settings["max_size"] = max_size
    return Predictor(model, preprocess=ImagePreprocessor(**settings))


def uninext_predictor(model, short_size: int | None, max_size: int | None) -> Predictor:
    """A UNINEXT model with its UNINEXT preprocessor (its resizing and normalisation), at the
    given sizes or its own."""
    from unipercept.api import Predictor
    from unipercept.modeling.uninext.preprocess import UninextPreprocessor

    if short_size is None and max_size is None:
        return Predictor(model)  # images and videos at the model's own resolutions
    image = model.default_preprocess()
    preprocess = UninextPreprocessor(
        short_size=short_size if short_size is not None else image.short_size,
        max_size=max_size if max_size is not None else image.max_size,
        size_divisibility=image.size_divisibility,
    )
    return Predictor(model, preprocess=preprocess)
