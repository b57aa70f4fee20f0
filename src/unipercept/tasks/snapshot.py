"""Saving a video session's state mid-video, so an interrupted job resumes where it stopped.

A session (and its tracker) is rebuilt the usual way, by ``task.start(model, prompt, ...)``, and
its state, the attributes that change from frame to frame, is then overwritten with the saved
one. What is saved is plain data and tensors only: tensors, numbers, strings, None, numpy
arrays, lists/tuples/dicts of those, and the few result types of this library (Instances,
RLEMasks, PromptEmbedding) as tagged dicts. Files are written with ``torch.save`` and read with
``torch.load(weights_only=True)``: nothing is unpickled beyond tensors and containers.
Attributes holding anything else (the model, the preprocessor, factories, OpenCV objects) are
not state: the rebuilt session already has them.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unipercept.modeling.outputs import PromptEmbedding
from unipercept.structures import Instances, RLEMasks
from unipercept.tasks.session import VideoSession
from unipercept.tracking.base import Tracker

_TAG = "__unipercept__"
_NOT_STATE = {"model", "preprocess"}


class _NotPlain(Exception):
    pass


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str | bytes | torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return {_TAG: "numpy", "data": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [_encode(v) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str | int) for k in value):
            raise _NotPlain
        return {_TAG: "dict", "items": [[k, _encode(v)] for k, v in value.items()]}
    if isinstance(value, Instances):
        return {
            _TAG: "instances",
            "image_size": list(value.image_size),
            "fields": {k: _encode(v) for k, v in value.fields().items()},
        }
    if isinstance(value, RLEMasks):
        return {_TAG: "rle", "rles": _encode(list(value.rles)), "size": list(value.image_size)}
    if isinstance(value, PromptEmbedding):
        return {
            _TAG: "prompt_embedding",
            "fields": {f.name: getattr(value, f.name) for f in dataclasses.fields(value)},
        }
    raise _NotPlain


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(_TAG)
    if kind == "numpy":
        return value["data"].numpy()
    if kind == "tuple":
        return tuple(_decode(v) for v in value["items"])
    if kind == "dict":
        return {k: _decode(v) for k, v in value["items"]}
    if kind == "instances":
        fields = {k: _decode(v) for k, v in value["fields"].items()}
        return Instances(tuple(value["image_size"]), **fields)
    if kind == "rle":
        return RLEMasks(_decode(value["rles"]), tuple(value["size"]))
    if kind == "prompt_embedding":
        return PromptEmbedding(**value["fields"])
    raise ValueError(f"unknown entry {kind!r} in a session snapshot")


def _capture(obj: object) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name, value in vars(obj).items():
        if name in _NOT_STATE:
            continue
        if isinstance(value, Tracker | VideoSession):
            state[name] = {_TAG: "object", "state": _capture(value)}
            continue
        try:
            state[name] = _encode(value)
        except _NotPlain:
            continue  # rebuilt by the constructor (model parts, factories, OpenCV objects)
    return state


def _restore(obj: object, state: dict[str, Any]) -> None:
    for name, value in state.items():
        if isinstance(value, dict) and value.get(_TAG) == "object":
            target = getattr(obj, name, None)
            if target is None:
                raise ValueError(f"session snapshot: {type(obj).__name__}.{name} is missing")
            _restore(target, value["state"])
        else:
            setattr(obj, name, _decode(value))


def session_state(session: VideoSession) -> dict[str, Any]:
    """The session's changing state as plain data (see the module's docstring)."""
    return {"type": type(session).__name__, "state": _capture(session)}


def load_session_state(session: VideoSession, state: dict[str, Any]) -> None:
    """Overwrites a freshly started session's state with a saved one of the same type."""
    if state.get("type") != type(session).__name__:
        raise ValueError(
            f"session snapshot is of a {state.get('type')}, the session a {type(session).__name__}"
        )
    _restore(session, state["state"])


def save_snapshot(path: str | Path, session: VideoSession, extra: dict[str, Any]) -> Path:
    """Writes the session's state and ``extra`` (plain data) to ``path`` atomically."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"session": session_state(session), "extra": _encode(extra)}, temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def load_snapshot(path: str | Path, session: VideoSession) -> dict[str, Any]:
    """Restores ``session`` from ``path``; returns the ``extra`` saved with it.

    Raises:
        ValueError: a file that is not a snapshot (it is read with ``weights_only=True``) or
            whose contents do not fit the session; the session may then be half restored.
    """
    try:
        with warnings.catch_warnings():
            # A damaged file makes torch warn of an odd pickle protocol before it fails.
            warnings.simplefilter("ignore", UserWarning)
            saved = torch.load(Path(path), map_location=session.device, weights_only=True)
    except Exception as error:
        # The weights-only unpickler fails on damaged bytes with many kinds of error
        # (UnpicklingError, EOFError, IndexError, RuntimeError, ...): all mean "not a snapshot".
        raise ValueError(f"{path}: not a session snapshot ({error!r})") from error
    if not isinstance(saved, dict) or "session" not in saved or "extra" not in saved:
        raise ValueError(f"{path}: not a session snapshot")
    try:
        load_session_state(session, saved["session"])
        return _decode(saved["extra"])
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        # A file of the right kind but damaged contents: say so instead of a stray KeyError.
        raise ValueError(f"{path}: a damaged session snapshot ({error!r})") from error
