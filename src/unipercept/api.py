"""The library API: a predictor around a model for images and videos.

predictor = Predictor(model)
instances = predictor.predict(image, "cat. dog", task="det")
with predictor.start("mot", "person") as session:
    for index, frame in open_frames("video.mp4"):
        tracked = session.step(frame)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from unipercept.data.preprocess import ImagePreprocessor
from unipercept.modeling.unipercept import UniPercept
from unipercept.structures import Instances, Prompt
from unipercept.tasks import TASKS, ImageTask, Task, VideoSession, VideoTask


def resolve_task(task: str | Task, **options: Any) -> Task:
    """A task object from its name (``"det"``, ..., ``"rvos"``) and options, or as given."""
    if isinstance(task, Task):
        if options:
            raise ValueError("options are given to a task by name only; this task is already built")
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {sorted(TASKS)}")
    return TASKS[task](**options)


class Predictor:
    """Runs a model on images (:meth:`predict`) and videos (:meth:`start` a session).

    Args:
        model: the prompt-driven model (put in eval mode here).
        preprocess: resizing and normalisation of the user's images.
    """

    def __init__(self, model: UniPercept, *, preprocess: ImagePreprocessor | None = None) -> None:
        self.model = model.eval()
        self.preprocess = preprocess or ImagePreprocessor()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @staticmethod
    def _prompt(task: Task, prompt: Prompt | str | Sequence[str] | Sequence[Prompt]) -> Any:
        if isinstance(prompt, str) or (
            isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt)
        ):
            return task.make_prompt(prompt)
        return prompt

    def predict(
        self,
        image: Tensor,
        prompt: Prompt | str | Sequence[str],
        task: str | ImageTask = "det",
        **options: Any,
    ) -> Instances:
        """Results for one (3, H, W) uint8 image, in its pixels.

        Args:
            prompt: a prompt, or what the task makes one of (``"cat. dog"``, an expression).
            task: an image task or its name (det, insseg, rec, res).
        """
        resolved = resolve_task(task, **options)
        if not isinstance(resolved, ImageTask):
            raise ValueError(f"{resolved.name} is a video task: use start() and step()")
        batch = self.preprocess([image], self.device)
        with torch.no_grad():
            output = self.model(batch, [self._prompt(resolved, prompt)])
        return resolved.postprocess(output, batch)[0]

    def start(
        self,
        task: str | VideoTask,
        prompt: Prompt | str | Sequence[str] | Sequence[Prompt],
        **options: Any,
    ) -> VideoSession:
        """A session for one video: feed it frames with ``step``; ``close`` it at the end.

        Args:
            task: a video task or its name (sot, vos, mot, mots, vis, rvos).
            prompt: category names or a CategoryPrompt (mot, mots, vis), an expression
                (rvos), or one AnnotationPrompt per object in the first frame (sot, vos).
        """
        resolved = resolve_task(task, **options)
        if not isinstance(resolved, VideoTask):
            raise ValueError(f"{resolved.name} is an image task: use predict()")
        return resolved.start(self.model, self._prompt(resolved, prompt), self.preprocess)
