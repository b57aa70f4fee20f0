"""The ten tasks on a UNINEXT model, with UNINEXT's own test-time rules.

``UNINEXT_TASKS`` maps the command line's task names to these classes, as ``TASKS`` does for
UniPercept; :class:`unipercept.api.Predictor` picks the table by the model's type, and
:func:`uninext_task` turns a project task object given for a UNINEXT model into its UNINEXT
counterpart.
"""

from __future__ import annotations

from unipercept.tasks.base import Task
from unipercept.tasks.uninext.common import UninextText
from unipercept.tasks.uninext.image import (
    UninextDetectionTask,
    UninextImageTask,
    UninextInstanceSegmentationTask,
    UninextReferringSegmentationTask,
    UninextReferringTask,
)
from unipercept.tasks.uninext.templates import UninextSotSession, UninextVosSession
from unipercept.tasks.uninext.trackers import UninextIdolTracker, UninextQuasiDenseTracker
from unipercept.tasks.uninext.tracking import (
    UninextMotSession,
    UninextReferringVideoSession,
    UninextVisSession,
)
from unipercept.tasks.uninext.video import (
    UninextMultiObjectTrackingSegmentationTask,
    UninextMultiObjectTrackingTask,
    UninextReferringVideoTask,
    UninextSingleObjectTrackingTask,
    UninextVideoInstanceSegmentationTask,
    UninextVideoObjectSegmentationTask,
)

UNINEXT_TASKS: dict[str, type[Task]] = {
    "det": UninextDetectionTask,
    "insseg": UninextInstanceSegmentationTask,
    "rec": UninextReferringTask,
    "res": UninextReferringSegmentationTask,
    "sot": UninextSingleObjectTrackingTask,
    "vos": UninextVideoObjectSegmentationTask,
    "mot": UninextMultiObjectTrackingTask,
    "mots": UninextMultiObjectTrackingSegmentationTask,
    "vis": UninextVideoInstanceSegmentationTask,
    "rvos": UninextReferringVideoTask,
}


def is_uninext_task(task: Task) -> bool:
    """Whether ``task`` is one of :data:`UNINEXT_TASKS`' classes (or a subclass)."""
    return isinstance(task, tuple(UNINEXT_TASKS.values()))


def uninext_task(task: Task) -> Task:
    """The UNINEXT task of the same name as a project task object, with the options both
    define (``score_threshold``, ``top_k``; each class's ``shared_options``). A UNINEXT task is
    returned as is. UNINEXT's fixed rules replace the rest (e.g. a detection task's
    ``quality_weight`` and ``suppression``: UNINEXT scores ``sqrt(cls * iou)`` and runs its own
    NMS).

    Raises:
        ValueError: a task of a name UNINEXT has no task for.
    """
    if is_uninext_task(task):
        return task
    counterpart = UNINEXT_TASKS.get(task.name)
    if counterpart is None:
        raise ValueError(
            f"no UNINEXT task is named {task.name!r}; tasks are {sorted(UNINEXT_TASKS)}"
        )
    shared = getattr(counterpart, "shared_options", ())
    return counterpart(**{name: getattr(task, name) for name in shared if hasattr(task, name)})


__all__ = [
    "UNINEXT_TASKS",
    "UninextDetectionTask",
    "UninextIdolTracker",
    "UninextImageTask",
    "UninextInstanceSegmentationTask",
    "UninextMotSession",
    "UninextMultiObjectTrackingSegmentationTask",
    "UninextMultiObjectTrackingTask",
    "UninextQuasiDenseTracker",
    "UninextReferringSegmentationTask",
    "UninextReferringTask",
    "UninextReferringVideoSession",
    "UninextReferringVideoTask",
    "UninextSingleObjectTrackingTask",
    "UninextSotSession",
    "UninextText",
    "UninextVideoInstanceSegmentationTask",
    "UninextVideoObjectSegmentationTask",
    "UninextVisSession",
    "UninextVosSession",
    "is_uninext_task",
    "uninext_task",
]
