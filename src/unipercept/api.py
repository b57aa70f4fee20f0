"""The library API: a predictor around a model for images and videos.

predictor = Predictor.from_pretrained("unipercept-tiny")
instances = predictor.predict("street.png", "cat. dog", task="det")
answers = predictor.predict_batch(["a.png", "b.png"], "cat. dog", task="det")
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
from unipercept.precision import autocast, float32_instances, parse_dtype
from unipercept.structures import Instances, Prompt
from unipercept.tasks import TASKS, ImageTask, Task, VideoSession, VideoTask
from unipercept.tasks.settings import check_task_settings, keyword_options, task_options


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
    own = (getattr(model, "task_settings", None) or {}).get(task)
    if own is not None:
        # The model's own settings for the task, under the caller's options.
        given = task_options(task, own, keyword_options(table[task]), _settings_source(model))
        options = {**given, **options}
    try:
        inspect.signature(table[task]).bind(**options)
    except TypeError:
        accepted = keyword_options(table[task])
        unknown = sorted(set(options) - set(accepted))
        takes = ", ".join(sorted(accepted)) or "no options"
        raise ValueError(f"task {task!r} takes {takes}; not {', '.join(unknown)}") from None
    return table[task](**options)


def _settings_source(model: Any) -> str:
    """Where a model's task settings come from, for errors."""
    path = getattr(model, "pretrained_path", None)
    return f"{path}/unipercept.json" if path is not None else "the model's task_settings"


def check_model_settings(model: Any) -> None:
    """Checks a model's own task settings (:mod:`unipercept.tasks.settings`) before any work.

    Raises:
        ValueError: settings its tasks refuse, naming the model folder and the entry.
    """
    settings = getattr(model, "task_settings", None)
    if not settings:
        return
    if is_uninext(model):
        from unipercept.tasks.uninext import UNINEXT_TASKS as table
    else:
        table = TASKS
    check_task_settings(settings, table, _settings_source(model))


class Predictor:
    """Runs a model on images (:meth:`predict`, :meth:`predict_batch`) and videos (:meth:`start`
    a session).

    Args:
        model: the prompt-driven model (put in eval mode here): a UniPercept, or a UNINEXT
            model (:class:`~unipercept.modeling.uninext.model.Uninext`), which runs UNINEXT's
            own tasks (:mod:`unipercept.tasks.uninext`).
        preprocess: resizing and normalisation of the user's images. By default the model's
            ``default_preprocess()`` (``default_preprocess(video=True)`` for a UNINEXT model's
            videos).
        dtype: the precision of the forward passes: float32 (default), bfloat16 or float16
            (a name or a torch dtype), run under ``torch.autocast`` on the model's device;
            the weights stay as they are and results come back in float32.
    """

    def __init__(
        self,
        model: UniPercept,
        *,
        preprocess: ImagePreprocessor | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        check_model_settings(model)
        self.model = model.eval()
        self.dtype = parse_dtype(dtype)
        default = getattr(model, "default_preprocess", None)
        if is_uninext(model):
            self.preprocess = preprocess or model.default_preprocess()
            self.video_preprocess = preprocess or model.default_preprocess(video=True)
        else:
            self.preprocess = preprocess or (default() if default else ImagePreprocessor())
            self.video_preprocess = None  # videos use ``preprocess``

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "unipercept-tiny",
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        preprocess: ImagePreprocessor | None = None,
    ) -> Predictor:
        """A predictor on a loaded model: a bundled model's name, a ``save_pretrained``
        folder, a UNINEXT ``.pth`` or a training run (see :func:`unipercept.load_model`)."""
        from unipercept.export import load_model

        dtype = parse_dtype(dtype)  # a bad name fails before the weights load
        return cls(load_model(name_or_path, device=device), preprocess=preprocess, dtype=dtype)

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
        image: Any,
        prompt: Prompt | str | Sequence[str] | PromptEmbedding,
        task: str | ImageTask = "det",
        **options: Any,
    ) -> Instances:
        """Results for one image, in its pixels: ``predictor.predict("street.png", "person.
        car")``.

        Args:
            image: a path, a PIL image, an (H, W, 3) uint8 array, or a (3, H, W) tensor
                (uint8 in 0..255, or float in [0, 1]).
            prompt: a prompt, or what the task makes one of (``"cat. dog"``, an expression),
                or one already encoded by :meth:`encode` (for many images, one prompt).
            task: an image task or its name (det, insseg, rec, res); ``options`` go to the
                task (e.g. ``score_threshold=0.3``).
        """
        return self.predict_batch([image], prompt, task, **options)[0]

    def predict_batch(
        self,
        images: Sequence[Any],
        prompt: Prompt | str | Sequence[str] | PromptEmbedding,
        task: str | ImageTask = "det",
        *,
        batch_size: int | None = None,
        **options: Any,
    ) -> list[Instances]:
        """Results for several images with one prompt, up to ``batch_size`` per forward pass
        (default: as many as there are).

        Padding-aware: only images that would be padded to the same canvas alone (the same size
        after resizing, rounded up to the preprocessor's ``size_divisibility``) share a forward
        pass, so no image is answered on a canvas larger than its own and each gets the answers
        :meth:`predict` gives it (up to float rounding). Frames of a video, or photos from one
        camera, all batch together; a mix of sizes runs as one batch per size.

        Args:
            images: what :meth:`predict` takes, for each image.
            prompt, task, options: as :meth:`predict`; the prompt is encoded once.
            batch_size: images per forward pass at most.

        Returns:
            one Instances per image, in the order given.
        """
        if isinstance(images, (str, Tensor)) or not isinstance(images, Sequence):
            raise ValueError(
                "images must be a list of images (paths, PIL images, arrays or tensors), got "
                f"{type(images).__name__}; use predict() for one image"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        resolved = resolve_task(task, model=self.model, **options)
        if not is_uninext(self.model) and not isinstance(resolved, ImageTask):
            raise ValueError(f"{resolved.name} is a video task: use start() and step()")
        if not isinstance(prompt, PromptEmbedding) and not _is_uninext_text(prompt):
            prompt = self.encode(prompt, resolved)
        tensors = [as_image(image) for image in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(tensors):
            groups.setdefault(self._canvas(image), []).append(index)
        size = batch_size or max(1, len(tensors))
        results: list[Instances | None] = [None] * len(tensors)
        for indices in groups.values():
            for first in range(0, len(indices), size):
                chunk = indices[first : first + size]
                found = self._forward([tensors[i] for i in chunk], prompt, resolved)
                for index, instances in zip(chunk, found, strict=True):
                    results[index] = instances
        return results  # type: ignore[return-value]

    def _canvas(self, image: Tensor) -> tuple[int, int]:
        """The padded (H, W) the preprocessor gives ``image`` alone (an empty image's own size:
        the preprocessor refuses it, naming it)."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        if height == 0 or width == 0:
            return height, width
        height, width = self.preprocess.input_size(height, width)
        step = max(1, int(self.preprocess.size_divisibility))
        return -(-height // step) * step, -(-width // step) * step

    def _forward(self, images: list[Tensor], prompt: Any, task: Task) -> list[Instances]:
        batch = self.preprocess(images, self.device)
        with torch.no_grad(), autocast(self.device, self.dtype):
            if is_uninext(self.model):
                from unipercept.tasks.uninext import UninextImageTask

                if not isinstance(task, UninextImageTask):
                    raise ValueError(f"{task.name} is a video task: use start() and step()")
                found = task.predict(self.model, batch, prompt)
            else:
                output = self.model(batch, _repeat(prompt, len(images)))
                found = task.postprocess(output, batch)
        return [float32_instances(instances) for instances in found]

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
        if not isinstance(resolved, ImageTask):
            raise ValueError(f"{resolved.name} is a video task: its session encodes the prompt")
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
        session = resolved.start(self.model, self._prompt(resolved, prompt), preprocess)
        session.dtype = self.dtype
        return session


def _is_uninext_text(prompt: Any) -> bool:
    module = sys.modules.get("unipercept.tasks.uninext")
    return module is not None and isinstance(prompt, module.UninextText)


def _repeat(embedding: PromptEmbedding, count: int) -> PromptEmbedding:
    """One encoded prompt for ``count`` images (an embedding of a batch of one, expanded)."""
    if embedding.tokens.shape[0] == count:
        return embedding
    if embedding.tokens.shape[0] != 1:
        raise ValueError(
            f"the encoded prompt holds {embedding.tokens.shape[0]} prompts for {count} images; "
            "encode one prompt for a batch"
        )
    return PromptEmbedding(
        tokens=embedding.tokens.expand(count, -1, -1),
        valid=embedding.valid.expand(count, -1),
        pooling=embedding.pooling.expand(count, -1, -1),
        class_valid=embedding.class_valid.expand(count, -1),
        kind=embedding.kind,
    )
