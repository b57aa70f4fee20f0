"""The model that ``--images`` and ``--data`` run: a bundled or saved model, or a
``conf/model`` option with a checkpoint."""

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
    """A Predictor for ``model_name``: a bundled model ("unipercept-tiny") or a save_pretrained
    folder, at its own resolution unless sizes are given; or a ``conf/model`` option built
    with ``weights`` loaded (at 800/1333 unless given)."""
    from unipercept import config
    from unipercept.api import Predictor
    from unipercept.data.preprocess import ImagePreprocessor
    from unipercept.modeling.pretrained import META_FILE, bundled_models, load_model

    if model_name in bundled_models() or (Path(model_name) / META_FILE).is_file():
        if weights is not None:
            raise ValueError(
                f"--weights is for a conf/model name; {model_name} is a pretrained model with "
                "its own weights"
            )
        model = load_model(model_name)
        settings = {**model.preprocess_settings}
    else:
        options = [n.split("/", 1)[1] for n in config.list_configs() if n.startswith("model/")]
        if model_name not in options:
            raise ValueError(
                f"--model {model_name}: not a bundled model ({', '.join(bundled_models())}), "
                f"a save_pretrained folder, nor a conf/model option ({', '.join(options)})"
            )
        model = config.instantiate(config.compose_group_option("model", model_name))
        if weights is not None:
            from unipercept.engine.checkpoint import load_model_weights

            load_model_weights(model, weights)
        else:
            logger.warning("warning: no --weights: the model's weights are as built")
        settings = {}
    if short_size is not None:
        settings["short_size"] = short_size
    if max_size is not None:
        settings["max_size"] = max_size
    return Predictor(model, preprocess=ImagePreprocessor(**settings))
