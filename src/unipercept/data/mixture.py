"""Sampling training batches from a mixture of datasets (UNINEXT's joint training).

Every step draws one dataset by its ratio, the same on every rank (so every rank trains the
same prompt kind and the same heads in that step), then the global batch of that step from the
dataset's shuffled order, cut into disjoint per-rank slices. Everything follows from the seed
and the step number, so two runs with the same seed see the same batches, and a run resumed
from :meth:`MixtureSampler.state_dict` continues exactly where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MixtureEntry:
    """One dataset of the mixture.

    Attributes:
        size: number of samples.
        ratio: relative frequency of steps drawn from it (any positive scale).
        prompt_kind: "category", "expression" or "annotation" (a batch never mixes kinds).
    """

    size: int
    ratio: float
    prompt_kind: str


class MixtureSampler:
    """An endless, deterministic stream of per-rank batches ``(dataset name, indices)``.

    Args:
        datasets: the mixture, by name.
        batch_size: samples per rank and step.
        seed: fixes the whole stream.
        rank, world_size: this process's slice of every step (DDP).
    """

    def __init__(
        self,
        datasets: Mapping[str, MixtureEntry],
        *,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not datasets:
            raise ValueError("datasets is empty: a mixture needs at least one dataset")
        for name, entry in datasets.items():
            if entry.size < 1:
                raise ValueError(f"dataset {name!r} has no samples")
            if entry.ratio <= 0:
                raise ValueError(f"dataset {name!r} needs a positive ratio, got {entry.ratio}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.names = sorted(datasets)
        self.entries = [datasets[name] for name in self.names]
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.step = 0
        ratios = torch.tensor([e.ratio for e in self.entries], dtype=torch.float64)
        self._probabilities = ratios / ratios.sum()
        # Steps already drawn from each dataset before step `_cursor`: advancing it one step at
        # a time makes sequential iteration O(1) per step.
        self._cursor = 0
        self._drawn = [0] * len(self.entries)

    def _generator(self, *parts: int) -> torch.Generator:
        # A separate, reproducible stream per purpose: hashing the parts into one seed.
        value = self.seed
        for part in parts:
            value = (value * 1_000_003 + part) % (2**62)
        return torch.Generator().manual_seed(value)

    def dataset_at(self, step: int) -> int:
        """Index (into :attr:`names`) of the dataset step ``step`` draws from."""
        return int(torch.multinomial(self._probabilities, 1, generator=self._generator(0, step)))

    def _permutation(self, dataset: int, epoch: int) -> torch.Tensor:
        return torch.randperm(
            self.entries[dataset].size, generator=self._generator(1, dataset, epoch)
        )

    def _global_indices(self, step: int, dataset: int) -> list[int]:
        """The whole step's indices (all ranks): the next ones in the dataset's order, which is
        reshuffled every time the dataset is exhausted."""
        consumed = self._steps_drawn_before(step)[dataset]
        size = self.entries[dataset].size
        count = self.batch_size * self.world_size
        position = consumed * count
        indices: list[int] = []
        while len(indices) < count:
            epoch, offset = divmod(position, size)
            order = self._permutation(dataset, epoch)[offset:].tolist()
            # Crossing into a new pass over the dataset, skip what this step already holds, so
            # that ranks never share a sample within a step (unavoidable only when one step
            # asks for more samples than the dataset has).
            used = set(indices) if count <= size else set()
            for index in order:
                position += 1
                if index not in used:
                    indices.append(index)
                    if len(indices) == count:
                        break
        return indices

    def _steps_drawn_before(self, step: int) -> list[int]:
        if step < self._cursor:
            self._cursor, self._drawn = 0, [0] * len(self.entries)
        while self._cursor < step:
            self._drawn[self.dataset_at(self._cursor)] += 1
            self._cursor += 1
        return self._drawn

    def batch_at(self, step: int) -> tuple[str, list[int]]:
        """This rank's batch of step ``step``: (dataset name, sample indices)."""
        dataset = self.dataset_at(step)
        indices = self._global_indices(step, dataset)
        mine = indices[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return self.names[dataset], mine

    def prompt_kind(self, name: str) -> str:
        return self.entries[self.names.index(name)].prompt_kind

    def __iter__(self) -> Iterator[tuple[str, list[int]]]:
        while True:
            batch = self.batch_at(self.step)
            self.step += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint sampler seed {state['seed']} differs from {self.seed}")
        self.step = int(state["step"])
