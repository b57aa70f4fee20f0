"""Per-image results and targets: N instances with typed, length-checked fields."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from unipercept.structures.masks import RLEMasks, masks_to_boxes

if TYPE_CHECKING:
    import supervision

_TENSOR_FIELDS = ("boxes", "scores", "labels", "track_ids", "embeddings")


@dataclass(frozen=True, eq=False)
class Instances:
    """N instances found in (or annotated on) one image or video frame.

    Every field but ``image_size`` is optional; the ones present must agree on N. Instances are
    immutable: derive new ones with :meth:`replace`, indexing or :meth:`cat`.

    Attributes:
        image_size: ``(height, width)`` of the image the instances live in.
        boxes: (N, 4) float xyxy in pixels of ``image_size``.
        scores: (N,) float confidences.
        labels: (N,) int64 category indices into the prompt's names.
        masks: (N, height, width) bool tensor, or :class:`RLEMasks` of that size.
        track_ids: (N,) int64 identities, unique within a video.
        embeddings: (N, D) float association embeddings.

    Example:
        >>> inst = Instances((480, 640), boxes=torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20]]),
        ...                  scores=torch.tensor([0.9, 0.3]))
        >>> len(inst[inst.scores > 0.5])
        1
    """

    image_size: tuple[int, int]
    boxes: Tensor | None = None
    scores: Tensor | None = None
    labels: Tensor | None = None
    masks: Tensor | RLEMasks | None = None
    track_ids: Tensor | None = None
    embeddings: Tensor | None = None

    def __post_init__(self) -> None:
        size = self.image_size
        if (
            not isinstance(size, tuple | list)
            or len(size) != 2
            or not all(isinstance(s, int) and s > 0 for s in size)
        ):
            raise ValueError(f"image_size must be (height, width) positive ints, got {size!r}")
        object.__setattr__(self, "image_size", (int(size[0]), int(size[1])))
        expected_dims = {"boxes": 2, "scores": 1, "labels": 1, "track_ids": 1, "embeddings": 2}
        lengths: dict[str, int] = {}
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"Instances.{name} must be a torch.Tensor, got {type(value).__name__}"
                )
            if value.ndim != expected_dims[name]:
                raise ValueError(
                    f"Instances.{name} must have {expected_dims[name]} dimensions, "
                    f"got shape {tuple(value.shape)}"
                )
            lengths[name] = value.shape[0]
        if self.boxes is not None and (
            self.boxes.shape[1] != 4 or not self.boxes.is_floating_point()
        ):
            raise ValueError(
                f"Instances.boxes must be (N, 4) float, got {self.boxes.dtype} "
                f"{tuple(self.boxes.shape)}"
            )
        for name in ("labels", "track_ids"):
            value = getattr(self, name)
            if value is not None and (value.is_floating_point() or value.dtype == torch.bool):
                raise ValueError(f"Instances.{name} must be an integer tensor, got {value.dtype}")
        if self.masks is not None:
            if isinstance(self.masks, RLEMasks):
                mask_size = self.masks.image_size
            elif isinstance(self.masks, Tensor):
                if self.masks.ndim != 3 or self.masks.dtype != torch.bool:
                    raise ValueError(
                        f"Instances.masks must be an (N, H, W) bool tensor or RLEMasks, got "
                        f"{self.masks.dtype} {tuple(self.masks.shape)}"
                    )
                mask_size = (self.masks.shape[1], self.masks.shape[2])
            else:
                raise TypeError(
                    f"Instances.masks must be a Tensor or RLEMasks, got {type(self.masks).__name__}"
                )
            if tuple(mask_size) != self.image_size:
                raise ValueError(
                    f"Instances.masks have size {tuple(mask_size)}, "
                    f"expected image_size {self.image_size}"
                )
            lengths["masks"] = len(self.masks)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Instances fields have different lengths: {lengths}")

    def fields(self) -> dict[str, Tensor | RLEMasks]:
        """The fields that are set, by name (``image_size`` excluded)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "image_size" and getattr(self, f.name) is not None
        }

    def __len__(self) -> int:
        for value in self.fields().values():
            return len(value)
        return 0

    def replace(self, **changes: Tensor | RLEMasks | None) -> Instances:
        """A copy with some fields replaced (and validated again)."""
        return dataclasses.replace(self, **changes)

    def __getitem__(self, index: int | slice | Tensor | Sequence[int]) -> Instances:
        if isinstance(index, int):
            length = len(self)
            if not -length <= index < length:
                raise IndexError(f"index {index} out of range for {length} instances")
            index = slice(index, index + 1 if index != -1 else None)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index)
            if index.dtype == torch.bool and index.shape != (len(self),):
                raise IndexError(
                    f"bool index of shape {tuple(index.shape)} for {len(self)} instances"
                )
        selected = {}
        for name, value in self.fields().items():
            if isinstance(value, Tensor) and isinstance(index, Tensor):
                selected[name] = value[index.to(value.device)]
            else:
                selected[name] = value[index]
        return Instances(self.image_size, **selected)

    def to(self, device: torch.device | str) -> Instances:
        """A copy with every tensor on ``device`` (RLE masks stay on the host)."""
        moved = {
            name: value.to(device) if isinstance(value, Tensor) else value
            for name, value in self.fields().items()
        }
        return Instances(self.image_size, **moved)

    @staticmethod
    def cat(instances_list: Sequence[Instances]) -> Instances:
        """Concatenates instances of one image; all must have the same fields set."""
        if not instances_list:
            raise ValueError("Instances.cat needs at least one Instances")
        first = instances_list[0]
        names = set(first.fields())
        for index, inst in enumerate(instances_list):
            if inst.image_size != first.image_size:
                raise ValueError(
                    f"instances_list[{index}] has image_size {inst.image_size}, "
                    f"expected {first.image_size}"
                )
            if set(inst.fields()) != names:
                raise ValueError(
                    f"instances_list[{index}] has fields {sorted(inst.fields())}, "
                    f"expected {sorted(names)}"
                )
        merged = {}
        for name in names:
            values = [getattr(inst, name) for inst in instances_list]
            if isinstance(values[0], RLEMasks):
                if not all(isinstance(v, RLEMasks) for v in values):
                    raise ValueError("Instances.cat cannot mix RLE and dense masks")
                merged[name] = RLEMasks.cat(values)
            else:
                merged[name] = torch.cat(values, dim=0)
        return Instances(first.image_size, **merged)

    def to_supervision(self) -> supervision.Detections:
        """These instances as a ``supervision.Detections`` (Roboflow's supervision package,
        optional: ``pip install supervision``), to draw them with its annotators or feed them
        to its trackers.

        Returns:
            ``supervision.Detections`` with ``xyxy`` (N, 4) float32 (from the masks' extents
            when there are no boxes), and, for the fields that are set, ``confidence`` (N,)
            float32, ``class_id`` (N,) int64, ``mask`` (N, H, W) bool (RLE masks decoded) and
            ``tracker_id`` (N,) int64; numpy arrays on the host.

        Raises:
            ImportError: supervision is not installed (the message names the pip command).
            ValueError: instances with neither boxes nor masks (supervision needs boxes).
        """
        try:
            sv = importlib.import_module("supervision")
        except ImportError as error:
            raise ImportError(
                f"Instances.to_supervision needs the supervision package ({error}); install "
                "it with: pip install supervision"
            ) from error
        masks = self.masks.decode() if isinstance(self.masks, RLEMasks) else self.masks
        boxes = self.boxes
        if boxes is None and masks is not None:
            boxes = masks_to_boxes(masks)
        if boxes is None:
            if len(self) == 0:
                return sv.Detections.empty()
            raise ValueError(
                f"Instances.to_supervision needs boxes or masks; these have only "
                f"{', '.join(self.fields())}"
            )

        def host(value: Tensor | None, dtype: torch.dtype) -> np.ndarray | None:
            return None if value is None else value.detach().to("cpu", dtype).numpy()

        return sv.Detections(
            xyxy=host(boxes, torch.float32),
            mask=host(masks, torch.bool),
            confidence=host(self.scores, torch.float32),
            class_id=host(self.labels, torch.int64),
            tracker_id=host(self.track_ids, torch.int64),
        )

    def __repr__(self) -> str:
        parts = [f"num_instances={len(self)}", f"image_size={self.image_size}"]
        for name, value in self.fields().items():
            shape = tuple(value.shape) if isinstance(value, Tensor) else repr(value)
            parts.append(f"{name}={shape}")
        return f"Instances({', '.join(parts)})"
