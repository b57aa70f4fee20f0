"""Tasks: which prompt to build and how to post-process, one file per task family.

``TASKS`` maps the command line's task names to their classes (a plain dict: nothing
registers itself on import).
"""

from unipercept.tasks.base import ImageTask, Task
from unipercept.tasks.det import DetectionTask, InstanceSegmentationTask
from unipercept.tasks.rec import ReferringSegmentationTask, ReferringTask
from unipercept.tasks.session import (
    AnnotationSession,
    ReferringSession,
    TrackingSession,
    VideoSession,
    VideoSummary,
)
from unipercept.tasks.suppression import BoxNMS, MaskNMS, MatrixNMS
from unipercept.tasks.video import (
    MultiObjectTrackingSegmentationTask,
    MultiObjectTrackingTask,
    ReferringVideoTask,
    SingleObjectTrackingTask,
    VideoInstanceSegmentationTask,
    VideoObjectSegmentationTask,
    VideoTask,
)

TASKS: dict[str, type[Task]] = {
    "det": DetectionTask,
    "insseg": InstanceSegmentationTask,
    "rec": ReferringTask,
    "res": ReferringSegmentationTask,
    "sot": SingleObjectTrackingTask,
    "vos": VideoObjectSegmentationTask,
    "mot": MultiObjectTrackingTask,
    "mots": MultiObjectTrackingSegmentationTask,
    "vis": VideoInstanceSegmentationTask,
    "rvos": ReferringVideoTask,
}

__all__ = [
    "TASKS",
    "AnnotationSession",
    "BoxNMS",
    "DetectionTask",
    "ImageTask",
    "InstanceSegmentationTask",
    "MaskNMS",
    "MatrixNMS",
    "MultiObjectTrackingSegmentationTask",
    "MultiObjectTrackingTask",
    "ReferringSegmentationTask",
    "ReferringSession",
    "ReferringTask",
    "ReferringVideoTask",
    "SingleObjectTrackingTask",
    "Task",
    "TrackingSession",
    "VideoInstanceSegmentationTask",
    "VideoObjectSegmentationTask",
    "VideoSession",
    "VideoSummary",
    "VideoTask",
]
