"""Prompts: what the user tells the model to look for.

Three kinds cover the ten tasks (see DESIGN.md): category names (det, insseg, mot, mots, vis),
a referring expression (rec, res, rvos) and an annotation of the target in a reference frame
(sot, vos). The model picks its prompt encoder by ``prompt.kind``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class CategoryPrompt:
    """Category names to detect, e.g. ``CategoryPrompt(("person", "red car"))``.

    Labels in the results index into ``names``. Names never seen in training work too (open
    vocabulary): each name is encoded by the text encoder.

    Attributes:
        names: one or more distinct, non-empty names; compared case- and space-insensitively
            for duplicates.
    """

    kind: ClassVar[str] = "category"
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        names = self.names
        if isinstance(names, str):
            raise TypeError(
                f"CategoryPrompt.names must be a sequence of names, got the string {names!r}; "
                "use CategoryPrompt.parse('cat. dog') to split a caption"
            )
        names = tuple(names)
        if not names:
            raise ValueError("CategoryPrompt.names is empty: give at least one category name")
        seen: dict[str, int] = {}
        for index, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise ValueError(
                    f"CategoryPrompt.names[{index}] is empty or not a string: {name!r}"
                )
            key = " ".join(name.lower().split())
            if key in seen:
                raise ValueError(
                    f"CategoryPrompt.names has a duplicate: names[{seen[key]}] = "
                    f"{names[seen[key]]!r} and names[{index}] = {name!r}"
                )
            seen[key] = index
        object.__setattr__(self, "names", tuple(name.strip() for name in names))

    @classmethod
    def parse(cls, caption: str) -> CategoryPrompt:
        """Splits a caption such as ``"cat. dog. traffic light"`` into names; ``.``, ``,`` and
        ``;`` all separate names."""
        return cls(tuple(part.strip() for part in re.split(r"[.,;]", caption) if part.strip()))

    def caption(self) -> str:
        """The names joined as the text encoder reads them: ``"cat. dog."``."""
        return ". ".join(self.names) + "."


@dataclass(frozen=True)
class ExpressionPrompt:
    """A referring expression, e.g. ``ExpressionPrompt("the small red circle left of the square")``.

    Attributes:
        text: a non-empty sentence naming one object.
    """

    kind: ClassVar[str] = "expression"
    text: str

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"ExpressionPrompt.text is empty: {self.text!r}")
        object.__setattr__(self, "text", " ".join(self.text.split()))


@dataclass(frozen=True, eq=False)
class AnnotationPrompt:
    """The target marked in a reference frame by a box or a mask (SOT, VOS).

    Attributes:
        frame: (3, H, W) image the annotation refers to, uint8 or float.
        box: (4,) float xyxy in pixels of ``frame``, inside the frame with positive width and
            height. Derived from ``mask`` when only a mask is given.
        mask: (H, W) bool mask of the target, or None for box-only annotations.

    Example:
        >>> frame = torch.zeros(3, 48, 64, dtype=torch.uint8)
        >>> AnnotationPrompt(frame, box=torch.tensor([4.0, 4.0, 20.0, 30.0])).box
        tensor([ 4.,  4., 20., 30.])
    """

    kind: ClassVar[str] = "annotation"
    frame: Tensor
    box: Tensor | None = None
    mask: Tensor | None = None

    def __post_init__(self) -> None:
        frame = self.frame
        if not isinstance(frame, Tensor) or frame.ndim != 3 or frame.shape[0] != 3:
            shape = tuple(frame.shape) if isinstance(frame, Tensor) else type(frame).__name__
            raise ValueError(f"AnnotationPrompt.frame must be a (3, H, W) tensor, got {shape}")
        if frame.is_floating_point() and not bool(torch.isfinite(frame).all()):
            raise ValueError("AnnotationPrompt.frame holds non-finite values (NaN or inf)")
        height, width = frame.shape[1], frame.shape[2]
        if self.box is None and self.mask is None:
            raise ValueError("AnnotationPrompt needs a box or a mask; both are None")
        if self.mask is not None:
            mask = self.mask
            if not isinstance(mask, Tensor) or mask.shape != (height, width):
                shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(
                    f"AnnotationPrompt.mask must be an ({height}, {width}) tensor like the "
                    f"frame, got {shape}"
                )
            if mask.dtype != torch.bool:
                raise ValueError(f"AnnotationPrompt.mask must be bool, got {mask.dtype}")
            if not bool(mask.any()):
                raise ValueError("AnnotationPrompt.mask is empty: it marks no pixel")
        if self.box is None:
            ys, xs = torch.nonzero(self.mask, as_tuple=True)
            box = torch.stack((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)).float()
        else:
            box = torch.as_tensor(self.box, dtype=torch.float32).flatten()
        if box.shape != (4,):
            raise ValueError(
                f"AnnotationPrompt.box must hold 4 numbers (x1, y1, x2, y2), got {tuple(box.shape)}"
            )
        values = [float(v) for v in box.tolist()]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"AnnotationPrompt.box holds non-finite numbers: {values}")
        x1, y1, x2, y2 = values
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"AnnotationPrompt.box {values} must have x2 > x1 and y2 > y1")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(
                f"AnnotationPrompt.box {values} is outside the frame of width {width} and "
                f"height {height}"
            )
        object.__setattr__(self, "box", box)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the reference frame."""
        return (self.frame.shape[1], self.frame.shape[2])


Prompt = CategoryPrompt | ExpressionPrompt | AnnotationPrompt
