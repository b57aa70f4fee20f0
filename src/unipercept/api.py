"""The library API: a predictor around a model for images and videos.

predictor = Predictor(model)
instances = predictor.predict(image, "cat. dog", task="det")
with predictor.start("mot", "person") as session:
    for index, frame in open_frames("video.mp4"):
        tracked = session.step(frame)
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from unipercept.data.preprocess import ImagePreprocessor
from unipercept.modeling.outputs import PromptEmbedding
from unipercept.modeling.unipercept import UniPercept
from unipercept.structures import Instances, Prompt
from unipercept.tasks import TASKS, ImageTask, Task, VideoSession, VideoTask


def as_image(image: Any) -> Tensor:
    """A (3, H, W) RGB tensor from a path, a PIL image, an (H, W, 3) uint8 array, or such a
    tensor (returned as is: uint8 in 0..255, or float in [0, 1]; the preprocessor refuses float
    values outside [0, 1], so 0..255 given as float is an error, not a washed-out image).

    Raises:
        ValueError: anything else, naming what was given.
    """
    import os

    import numpy as np

    if isinstance(image, (str, os.PathLike)):
        from unipercept.data.io import load_image

        return load_image(image)
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
        return image
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image array must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
            )
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    raise ValueError(
        "image must be a path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor, "
        f"got {type(image).__name__}"
    )


def is_uninext(model: Any) -> bool:
    """Whether ``model`` is a :class:`~unipercept.modeling.uninext.model.Uninext`.

    A model can only be one once its module is loaded, so the check does not import it (which
    would load the text encoder's libraries into every ``import unipercept.api``).
    """
    module = sys.modules.get("unipercept.modeling.uninext.model")
    return module is not None and isinstance(model, module.Uninext)


def resolve_task(task: str | Task, *, model: Any = None, **options: Any) -> Task:
    """A task object from its name (``"det"``, ..., ``"rvos"``) and options, or as given.

    For a UNINEXT ``model`` a name gives UNINEXT's task
    (:data:`unipercept.tasks.uninext.UNINEXT_TASKS`), and a project task object its UNINEXT
    counterpart (:func:`unipercept.tasks.uninext.uninext_task`).
    """
    if is_uninext(model):
        from unipercept.tasks.uninext import UNINEXT_TASKS, uninext_task

        table, adapt = UNINEXT_TASKS, uninext_task
    else:
        table, adapt = TASKS, None
    if isinstance(task, Task):
        if options:
            raise ValueError("options are given to a task by name only; this task is already built")
        if adapt is not None:
            return adapt(task)
        if "unipercept.tasks.uninext" in sys.modules:
            from unipercept.tasks.uninext import is_uninext_task

            if is_uninext_task(task):
                raise ValueError(f"{type(task).__name__} runs on a UNINEXT model only")
        return task
    if task not in table:
        raise ValueError(f"unknown task {task!r}; tasks are {sorted(table)}")
    try:
        inspect.signature(table[task]).bind(**options)
    except TypeError:
        accepted = _options(table[task])
        unknown = sorted(set(options) - set(accepted))
        takes = ", ".join(sorted(accepted)) or "no options"
        raise ValueError(f"task {task!r} takes {takes}; not {', '.join(unknown)}") from None
    return table[task](**options)


def _options(cls: type) -> set[str]:
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


class Predictor:
    """Runs a model on images (:meth:`predict`) and videos (:meth:`start` a session).

    Args:
        model: the prompt-driven model (put in eval mode here): a UniPercept, or a UNINEXT
            model (:class:`~unipercept.modeling.uninext.model.Uninext`), which runs UNINEXT's
            own tasks (:mod:`unipercept.tasks.uninext`).
        preprocess: resizing and normalisation of the user's images. By default
            :class:`ImagePreprocessor`; for a UNINEXT model its ``default_preprocess()`` for
            images and ``default_preprocess(video=True)`` for videos.
    """

    def __init__(self, model: UniPercept, *, preprocess: ImagePreprocessor | None = None) -> None:
        self.model = model.eval()
        if is_uninext(model):
            self.preprocess = preprocess or model.default_preprocess()
            self.video_preprocess = preprocess or model.default_preprocess(video=True)
        else:
            self.preprocess = preprocess or ImagePreprocessor()
            self.video_preprocess = None  # videos use ``preprocess``

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
        prompt: Prompt | str | Sequence[str] | PromptEmbedding,
        task: str | ImageTask = "det",
        **options: Any,
    ) -> Instances:
        """Results for one (3, H, W) uint8 image, in its pixels.

        Args:
            prompt: a prompt, or what the task makes one of (``"cat. dog"``, an expression),
                or one already encoded by :meth:`encode` (for many images, one prompt).
            task: an image task or its name (det, insseg, rec, res).
        """
        resolved = resolve_task(task, model=self.model, **options)
        if is_uninext(self.model):
            return self._predict_uninext(image, prompt, resolved)
        if not isinstance(resolved, ImageTask):
            raise ValueError(f"{resolved.name} is a video task: use start() and step()")
        batch = self.preprocess([image], self.device)
        prompts = (
            prompt if isinstance(prompt, PromptEmbedding) else [self._prompt(resolved, prompt)]
        )
        with torch.no_grad():
            output = self.model(batch, prompts)
        return resolved.postprocess(output, batch)[0]

    def _predict_uninext(self, image: Tensor, prompt: Any, task: Task) -> Instances:
        from unipercept.tasks.uninext import UninextImageTask

        if not isinstance(task, UninextImageTask):
            raise ValueError(f"{task.name} is a video task: use start() and step()")
        batch = self.preprocess([image], self.device)
        with torch.no_grad():
            return task.predict(self.model, batch, self._prompt(task, prompt))[0]

    def encode(
        self, prompt: Prompt | str | Sequence[str], task: str | ImageTask
    ) -> PromptEmbedding:
        """The prompt encoded once, for :meth:`predict` on many images (category names and
        expressions; an annotation prompt belongs to its own frame). For a UNINEXT model, a
        :class:`~unipercept.tasks.uninext.UninextText`."""
        resolved = resolve_task(task, model=self.model)
        if is_uninext(self.model):
            from unipercept.tasks.uninext import UninextImageTask

            if not isinstance(resolved, UninextImageTask):
                raise ValueError(f"{resolved.name} is a video task: its session encodes the prompt")
            with torch.no_grad():
                return resolved.encode(self.model, self._prompt(resolved, prompt))
        with torch.no_grad():
            return self.model.encode_prompts([self._prompt(resolved, prompt)])

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
        resolved = resolve_task(task, model=self.model, **options)
        if not isinstance(resolved, VideoTask):
            raise ValueError(f"{resolved.name} is an image task: use predict()")
        preprocess = self.video_preprocess or self.preprocess
        return resolved.start(self.model, self._prompt(resolved, prompt), preprocess)
