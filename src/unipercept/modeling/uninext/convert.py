"""A UNINEXT ``.pth`` -> a UNINEXT model, or a ``save_pretrained`` folder.

``load_uninext_checkpoint`` reads the file (``torch.load(weights_only=True)``), infers the
architecture from its keys and shapes, checks that every key has its place with its shape, and
loads. ``convert_uninext`` writes the loaded model as a normal model folder that
``load_model``, ``predict --checkpoint`` and ``evaluate --model`` take.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from unipercept.modeling.uninext.build import (
    TEMPLATE_SIZE,
    ArchitectureError,
    architecture_from_shapes,
    build_uninext,
)
from unipercept.modeling.uninext.checkpoint import (
    UninextCheckpointError,
    read_uninext_checkpoint,
    to_our_names,
    to_uninext_name,
)
from unipercept.modeling.uninext.model import DEFAULT_PREPROCESS, Uninext

BUILDER = "unipercept.modeling.uninext.build_uninext"
IMAGE_SIZE = DEFAULT_PREPROCESS["short_size"]
MAX_SIZE = DEFAULT_PREPROCESS["max_size"]
VIDEO_SIZE = DEFAULT_PREPROCESS["video_size"]


def load_uninext_checkpoint(
    path: str | os.PathLike[str],
    *,
    image_size: int = IMAGE_SIZE,
    max_size: int = MAX_SIZE,
    video_size: int = VIDEO_SIZE,
    template_size: int = TEMPLATE_SIZE,
) -> Uninext:
    """The model a UNINEXT checkpoint holds, with its weights, in eval mode.

    Args:
        path: a released ``.pth`` (``{"model": state_dict}``).
        image_size, max_size: image tasks' shortest and longest edge.
        video_size: video tasks' shortest edge.
        template_size: SOT/VOS template side (256 in UNINEXT's configs).

    Raises:
        UninextCheckpointError: the file cannot be read safely, is not a UNINEXT checkpoint,
            or has a missing, unexpected or mis-shaped key (named, in UNINEXT's naming).
    """
    for name, value in (
        ("image_size", image_size),
        ("max_size", max_size),
        ("video_size", video_size),
        ("template_size", template_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    path = Path(path)
    state = read_uninext_checkpoint(path)
    shapes = {key: tuple(tensor.shape) for key, tensor in state.items()}
    try:
        architecture = architecture_from_shapes(shapes, template_size=template_size)
    except ArchitectureError as error:
        raise UninextCheckpointError(f"{path}: {error}") from None
    weights = to_our_names(state, source=str(path))
    model = build_uninext(**architecture)
    expected = model.state_dict()
    for name, tensor in weights.items():
        if name not in expected:
            raise UninextCheckpointError(f"{path}: unexpected key {to_uninext_name(name)}")
        if tensor.shape != expected[name].shape:
            raise UninextCheckpointError(
                f"{path}: {to_uninext_name(name)} has shape {tuple(tensor.shape)}, the model "
                f"its other keys describe needs {tuple(expected[name].shape)}"
            )
    missing = [name for name in expected if name not in weights]
    if missing:
        raise UninextCheckpointError(
            f"{path}: missing key {to_uninext_name(missing[0])} ({len(missing)} missing)"
        )
    model.load_state_dict(weights, strict=True)
    model.config = {"_target_": BUILDER, **architecture}
    model.preprocess_settings = {
        "short_size": image_size,
        "max_size": max_size,
        "video_size": video_size,
    }
    model.pretrained_path = path
    return model.eval()


def convert_uninext(
    checkpoint: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    image_size: int = IMAGE_SIZE,
    max_size: int = MAX_SIZE,
    video_size: int = VIDEO_SIZE,
    template_size: int = TEMPLATE_SIZE,
) -> Path:
    """Converts a UNINEXT checkpoint into a model folder (``save_pretrained``'s rules: a new
    folder, an empty one or an earlier save; nothing else there is touched).

    Returns:
        The folder.
    """
    from unipercept.modeling.pretrained import check_destination, save_pretrained

    check_destination(Path(folder))  # before the (slow) load
    model = load_uninext_checkpoint(
        checkpoint,
        image_size=image_size,
        max_size=max_size,
        video_size=video_size,
        template_size=template_size,
    )
    source = Path(checkpoint)
    backbone = model.config["backbone"]["kind"]
    description = (
        f"UNINEXT ({backbone} backbone) converted from {source.name} "
        f"(sha256 {_sha256(source)}) by python -m unipercept.convert uninext"
    )
    return save_pretrained(
        model,
        folder,
        config=model.config,
        preprocess=model.preprocess_settings,
        description=description,
        exclude_pretrained=False,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
