"""Training batches from a mixture of datasets, one prompt kind per batch.

Every batch is a pure function of (seed, step, rank): the mixture sampler picks the dataset
and the samples, and the transforms, expression choice and template jitter draw from a
generator seeded with the same triple. Resuming at a step therefore reproduces exactly the
batches a straight run would have seen, whatever happened to the global random state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from unipercept.data.mixture import MixtureEntry, MixtureSampler
from unipercept.data.sampling import (
    clip_from_frames,
    invisible_frames,
    jitter_box,
    pseudo_video,
    sample_clip_indices,
    sample_template_pair,
    zoom_crop,
)
from unipercept.data.spec import DatasetSpec
from unipercept.data.transforms import (
    Clip,
    ColorJitter,
    Compose,
    HorizontalFlip,
    RandomCrop,
    ResizeShortestEdge,
)
from unipercept.data.types import Sample
from unipercept.structures import (
    AnnotationPrompt,
    CategoryPrompt,
    ExpressionPrompt,
    ImageBatch,
    Instances,
    Prompt,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class TrainingBatch:
    """One step's inputs for one rank.

    Attributes:
        dataset: the dataset the step drew from.
        prompt_kind: the kind of every prompt in the batch.
        images: the key frames.
        prompts: one prompt per image.
        targets: per image, the objects the prompt asks for: ``labels`` index the prompt's
            rows, boxes and masks are in the key frame's input pixels, ``track_ids`` identify
            objects across the key and reference frames.
        reference_images, reference_targets: a second frame of the same clip (videos and
            pseudo-videos) for the association loss, or None.
    """

    dataset: str
    prompt_kind: str
    images: ImageBatch
    prompts: list[Prompt]
    targets: list[Instances]
    reference_images: ImageBatch | None = None
    reference_targets: list[Instances] | None = None


@dataclass(frozen=True)
class ExampleSettings:
    """How samples become training examples.

    Attributes:
        short_sizes, max_size: multi-scale resize of the input.
        crop_probability: DETR's random crop (category prompts only: expressions and
            annotations must keep their object in the frame).
        video_frames: 2 trains the association loss on a key and a reference frame; 1 does not.
        pseudo_video: still images make their reference frame by a random crop (stage 3).
        clip_window: the reference frame lies within this many frames of the key frame.
        template_gap: SOT/VOS template and search frames lie at most this far apart.
        absent_probability: share of SOT/VOS examples whose search frame lacks the target (a
            frame of the video where it is not visible, or a crop that leaves it out), so the
            score learns to say "not found".
        mask_prior_probability: share of SOT/VOS examples whose template marks the target by
            its mask (VOS) rather than its box (SOT), where the data has masks.
        search_min_fraction: a still image's search frame is a crop of at least this fraction
            of each side, resized back (the target moves and grows up to ``1 / fraction``).
    """

    short_sizes: tuple[int, ...] = (480, 512, 544, 576, 608, 640)
    max_size: int = 1024
    crop_probability: float = 0.5
    video_frames: int = 1
    pseudo_video: bool = False
    clip_window: int = 10
    template_gap: int = 30
    absent_probability: float = 0.0
    mask_prior_probability: float = 0.0
    search_min_fraction: float = 0.5


def _normalise(images: Sequence[Tensor]) -> ImageBatch:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ImageBatch.from_images([(image.float() / 255.0 - mean) / std for image in images])


def _only(target: Instances, track_ids: Sequence[int]) -> Instances:
    """The objects with the given identities, relabelled 0 (the prompt's single row)."""
    keep = torch.isin(target.track_ids, torch.tensor(list(track_ids), dtype=target.track_ids.dtype))
    chosen = target[keep]
    return chosen.replace(labels=torch.zeros(len(chosen), dtype=torch.int64))


class TrainingData:
    """Reads the mixture's datasets once and builds the batch of any step.

    Args:
        datasets: the mixture's datasets by name.
        ratios: each dataset's share of the steps.
        batch_size: examples per rank and step.
        settings: how samples become examples.
        seed, rank, world_size: as for :class:`MixtureSampler`.
    """

    def __init__(
        self,
        datasets: Mapping[str, DatasetSpec],
        ratios: Mapping[str, float],
        *,
        batch_size: int,
        settings: ExampleSettings,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        missing = set(ratios) ^ set(datasets)
        if missing:
            raise ValueError(
                f"ratios and datasets must name the same datasets; mismatched: {sorted(missing)}"
            )
        self.specs = dict(datasets)
        self.samples: dict[str, list[Sample]] = {
            name: spec.read() for name, spec in datasets.items()
        }
        for name, samples in self.samples.items():
            if not samples:
                raise ValueError(f"dataset {name!r} has no samples")
        self.sampler = MixtureSampler(
            {
                name: MixtureEntry(len(self.samples[name]), float(ratios[name]), spec.prompt_kind)
                for name, spec in datasets.items()
            },
            batch_size=batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        self.settings = settings
        self.seed, self.rank = seed, rank
        resize = ResizeShortestEdge(short_sizes=settings.short_sizes, max_size=settings.max_size)
        self.transform = Compose(
            [
                HorizontalFlip(),
                resize,
                RandomCrop(probability=settings.crop_probability),
                resize,
                ColorJitter(),
            ]
        )
        # Expressions and annotations must keep their object (and an expression the objects
        # its relation names) in the frame: no crop.
        self.uncropped_transform = Compose([HorizontalFlip(), resize, ColorJitter()])
        self.appearance = ColorJitter()

    def batch_at(self, step: int) -> TrainingBatch:
        """This rank's batch for ``step``."""
        name, indices = self.sampler.batch_at(step)
        generator = torch.Generator().manual_seed(
            ((self.seed * 1_000_003 + step) * 1009 + self.rank) % 2**62
        )
        spec = self.specs[name]
        build = {
            "category": self._category,
            "expression": self._expression,
            "annotation": self._annotation,
        }[spec.prompt_kind]
        examples = [build(self.samples[name][i], generator) for i in indices]
        key_images = [e[0].images[0] for e in examples]
        batch_kwargs = {}
        if self.settings.video_frames > 1 and all(len(e[0].images) > 1 for e in examples):
            batch_kwargs = {
                "reference_images": _normalise([e[0].images[1] for e in examples]),
                "reference_targets": [e[2][1] for e in examples],
            }
        return TrainingBatch(
            dataset=name,
            prompt_kind=spec.prompt_kind,
            images=_normalise(key_images),
            prompts=[e[1] for e in examples],
            targets=[e[2][0] for e in examples],
            **batch_kwargs,
        )

    def _frames(self, sample: Sample, generator: torch.Generator) -> Clip:
        """1 or 2 frames: a video's clip, or a still image (as a pseudo-video in stage 3)."""
        want = self.settings.video_frames
        if sample.is_video:
            indices = sample_clip_indices(
                len(sample.frames), want, self.settings.clip_window, generator
            )
            return clip_from_frames(sample, indices)
        clip = clip_from_frames(sample, [0])
        if want > 1 and self.settings.pseudo_video:
            return pseudo_video(
                clip.images[0],
                clip.targets[0],
                want,
                generator,
                expressions=clip.expressions,
                expression_targets=clip.expression_targets,
            )
        return clip

    def _category(
        self, sample: Sample, generator: torch.Generator
    ) -> tuple[Clip, Prompt, tuple[Instances, ...]]:
        clip = self.transform(self._frames(sample, generator), generator)
        return clip, CategoryPrompt(sample.categories), clip.targets

    def _expression(
        self, sample: Sample, generator: torch.Generator
    ) -> tuple[Clip, Prompt, tuple[Instances, ...]]:
        if not sample.expressions:
            raise ValueError(f"{sample.dataset} sample {sample.sample_id} has no expression")
        chosen = int(torch.randint(len(sample.expressions), (1,), generator=generator))
        clip = self.uncropped_transform(self._frames(sample, generator), generator)
        ids = clip.expression_targets[chosen]
        return (
            clip,
            ExpressionPrompt(clip.expressions[chosen]),
            tuple(_only(t, ids) for t in clip.targets),
        )

    def _annotation(
        self, sample: Sample, generator: torch.Generator
    ) -> tuple[Clip, Prompt, tuple[Instances, ...]]:
        clip, track = self._template_and_search(sample, generator)
        clip = self.uncropped_transform(clip, generator)
        # The search frame's appearance changes on its own (lighting, camera).
        search = self.appearance(
            Clip(images=(clip.images[1],), targets=(clip.targets[1],)), generator
        )
        template_target = _only(clip.targets[0], [track])
        use_mask = template_target.masks is not None and _draw(
            generator, self.settings.mask_prior_probability
        )
        if use_mask:
            prompt = AnnotationPrompt(clip.images[0], mask=template_target.masks[0])
        else:
            box = jitter_box(template_target.boxes[0], template_target.image_size, generator)
            prompt = AnnotationPrompt(clip.images[0], box=box)
        # The search frame is the key frame: the model finds the object there (or nothing).
        return search, prompt, (_only(search.targets[0], [track]),)

    def _template_and_search(self, sample: Sample, generator: torch.Generator) -> tuple[Clip, int]:
        """The template frame and the search frame (a later or earlier frame of a video, a
        zoomed crop of a still image), the target absent from the search frame in
        ``absent_probability`` of the examples."""
        settings = self.settings
        template, search, track = sample_template_pair(sample, settings.template_gap, generator)
        absent = _draw(generator, settings.absent_probability)
        if sample.is_video and absent:
            gone = invisible_frames(sample, track, template, settings.template_gap)
            if gone:
                search = gone[int(torch.randint(len(gone), (1,), generator=generator))]
                return clip_from_frames(sample, [template, search]), track
        clip = clip_from_frames(sample, [template, search])
        if sample.is_video and not absent:
            return clip, track
        cropped = zoom_crop(
            clip.images[1],
            clip.targets[1],
            track,
            generator,
            min_fraction=settings.search_min_fraction,
            absent=absent,
        )
        if cropped is None:  # the target fills the frame (absent), or every crop lost it
            return clip, track
        return (
            Clip(images=(clip.images[0], cropped[0]), targets=(clip.targets[0], cropped[1])),
            track,
        )


def _draw(generator: torch.Generator, probability: float) -> bool:
    """True with ``probability``; draws nothing when it is 0 (so batches without the option
    stay as they were)."""
    return probability > 0 and float(torch.rand((), generator=generator)) < probability
