"""Trivial predictors that score what doing nothing scores, run through the same loops and
scorers as a model (``evaluate --model copy-first``).

``copy-first`` answers the annotation tasks with the annotation itself in every frame: the
first-frame masks for VOS, the first-frame box for SOT (the "copy the first frame" baselines
that a tracker or segmenter must beat to be following anything).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads when a baseline runs, not when the CLI parses --help
    from torch import Tensor

    from unipercept.structures import AnnotationPrompt, Instances

# --model names that are baselines, not models, and the tasks they answer.
BASELINES = ("copy-first",)
BASELINE_TASKS = ("sot", "vos")


class FirstFrameSession:
    """Answers every frame with the first frame's annotations (one per object, scores 1)."""

    def __init__(self, prompts: Sequence[AnnotationPrompt]) -> None:
        import torch

        from unipercept.structures import Instances, boxes_to_masks

        self.size = prompts[0].image_size
        masks = [
            p.mask if p.mask is not None else boxes_to_masks(p.box[None], p.image_size)[0]
            for p in prompts
        ]
        self.answer = Instances(
            self.size,
            boxes=torch.stack([p.box for p in prompts]).float(),
            scores=torch.ones(len(prompts)),
            labels=torch.zeros(len(prompts), dtype=torch.int64),
            masks=torch.stack(masks).bool(),
            track_ids=torch.arange(1, len(prompts) + 1),
        )

    def step(self, frame: Tensor) -> Instances:
        size = (int(frame.shape[1]), int(frame.shape[2]))
        if size != self.size:
            raise ValueError(
                f"frame is {size[1]}x{size[0]}, the annotated one {self.size[1]}x{self.size[0]}"
            )
        return self.answer

    def close(self) -> None:
        return None

    def __enter__(self) -> FirstFrameSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class CopyFirstPredictor:
    """The copy-first-frame baseline with a predictor's ``start`` (sot and vos only)."""

    def start(self, task: str, prompt: Any, **options: Any) -> FirstFrameSession:
        from unipercept.structures import AnnotationPrompt

        if task not in BASELINE_TASKS:
            raise ValueError(f"the copy-first baseline answers sot and vos, not {task}")
        prompts = [prompt] if isinstance(prompt, AnnotationPrompt) else list(prompt)
        if not prompts or not all(isinstance(p, AnnotationPrompt) for p in prompts):
            raise ValueError("the copy-first baseline needs first-frame annotations")
        return FirstFrameSession(prompts)
