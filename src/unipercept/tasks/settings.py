"""A model's own task settings: the options its tasks run with unless the caller gives others.

A model's score calibration is its own: the thresholds and priors that suit one model's scores
need not suit another's (as a Hugging Face model carries its ``generation_config``). A model
folder may therefore hold, in ``unipercept.json``'s ``"tasks"``, per task name the options its
tasks take, chosen for that model; ``Predictor`` and the command lines use them as defaults
under whatever options the caller passes. They are plain data: numbers, strings and booleans,
and for the tracking tasks a ``"tracker"`` entry naming one of the project's trackers
(:data:`TRACKERS`) with its options. Nothing else can be built from them.

    {"vos": {"motion_weight": 0.75, "motion_sigma": 1.0},
     "mot": {"tracker": {"name": "qdtrack", "init_score_threshold": 0.4}}}
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

# The trackers a settings entry may name (``conf/tracker/<name>.yaml``'s classes), by the
# module and class in ``unipercept.tracking``; loaded when named.
TRACKERS: dict[str, tuple[str, str]] = {
    "qdtrack": ("unipercept.tracking.qdtrack", "QDTrack"),
    "idol": ("unipercept.tracking.idol", "IdolTracker"),
    "bytetrack": ("unipercept.tracking.bytetrack", "ByteTrack"),
    "flow": ("unipercept.tracking.flow", "FlowTracker"),
}
_PLAIN = (bool, int, float, str)


def _tracker_factory(task: str, entry: object, source: str) -> functools.partial:
    where = f"{source}: tasks.{task}.tracker"
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise ValueError(f"{where} must be {{'name': one of {sorted(TRACKERS)}, options...}}")
    options = {k: v for k, v in entry.items() if k != "name"}
    if entry["name"] not in TRACKERS:
        raise ValueError(f"{where}: unknown tracker {entry['name']!r}; one of {sorted(TRACKERS)}")
    module, name = TRACKERS[entry["name"]]
    tracker = getattr(importlib.import_module(module), name)
    for key, value in options.items():
        if not isinstance(value, _PLAIN):
            raise ValueError(f"{where}.{key} must be a number, string or boolean, got {value!r}")
    try:
        tracker(**options)  # a bad option or value fails here, naming itself
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    return functools.partial(tracker, **options)


def task_options(task: str, entry: object, accepted: set[str], source: str) -> dict[str, Any]:
    """The options one task's settings entry gives, as the task class takes them.

    Args:
        task: the task's name.
        entry: its settings, ``{option: value}``.
        accepted: the options the task class takes.
        source: where the settings come from, for errors (a model folder).

    Raises:
        ValueError: an entry that is not a mapping, an option the task does not take, a value
            that is not plain data, or a tracker entry that does not build.
    """
    if not isinstance(entry, Mapping):
        raise ValueError(f"{source}: tasks.{task} must be a mapping of options, got {entry!r}")
    unknown = sorted(set(entry) - accepted)
    if unknown:
        raise ValueError(
            f"{source}: tasks.{task} sets {', '.join(map(str, unknown))}, which {task} does not "
            f"take ({', '.join(sorted(accepted))})"
        )
    options: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "tracker":
            options[key] = _tracker_factory(task, value, source)
        elif isinstance(value, _PLAIN):
            options[key] = value
        else:
            raise ValueError(
                f"{source}: tasks.{task}.{key} must be a number, string or boolean, got {value!r}"
            )
    return options


def keyword_options(cls: type) -> set[str]:
    """The keyword options a task class takes, following ``**kwargs`` to its bases."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind == p.KEYWORD_ONLY}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def check_task_settings(
    settings: object, tasks: Mapping[str, type], source: str
) -> dict[str, dict[str, Any]]:
    """Every task's options from a model's settings (see the module docstring), each checked
    by building the task with them.

    Raises:
        ValueError: settings that are not a mapping of task names to option mappings, a task
            name not in ``tasks``, or options its task refuses; the message names ``source``.
    """
    if not isinstance(settings, Mapping):
        raise ValueError(f"{source}: tasks must be a mapping of task names, got {settings!r}")
    checked: dict[str, dict[str, Any]] = {}
    for task, entry in settings.items():
        if task not in tasks:
            raise ValueError(f"{source}: tasks.{task} is not a task; tasks are {sorted(tasks)}")
        options = task_options(task, entry, keyword_options(tasks[task]), source)
        try:
            tasks[task](**options)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: tasks.{task}: {error}") from None
        checked[task] = options
    return checked
