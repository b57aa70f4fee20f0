"""Tasks: which prompt to build and how to post-process, one file per task family.

``TASKS`` maps the command line's task names to their classes (a plain dict: nothing
registers itself on import).
"""

from unipercept.tasks.base import Task
from unipercept.tasks.det import DetectionTask, InstanceSegmentationTask
from unipercept.tasks.rec import ReferringSegmentationTask, ReferringTask
from unipercept.tasks.suppression import BoxNMS, MaskNMS, MatrixNMS

TASKS: dict[str, type[Task]] = {
    "det": DetectionTask,
    "insseg": InstanceSegmentationTask,
    "rec": ReferringTask,
    "res": ReferringSegmentationTask,
}

__all__ = [
    "TASKS",
    "BoxNMS",
    "DetectionTask",
    "InstanceSegmentationTask",
    "MaskNMS",
    "MatrixNMS",
    "ReferringSegmentationTask",
    "ReferringTask",
    "Task",
]
