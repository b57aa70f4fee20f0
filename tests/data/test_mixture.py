from __future__ import annotations

from collections import Counter

import pytest

from unipercept.data.mixture import MixtureEntry, MixtureSampler

DATASETS = {
    "coco": MixtureEntry(size=50, ratio=3.0, prompt_kind="category"),
    "refcoco": MixtureEntry(size=23, ratio=1.0, prompt_kind="expression"),
}


def take(sampler: MixtureSampler, steps: int) -> list[tuple[str, list[int]]]:
    iterator = iter(sampler)
    return [next(iterator) for _ in range(steps)]


def test_reproducible_by_seed_and_different_across_seeds():
    first = take(MixtureSampler(DATASETS, batch_size=4, seed=7), 50)
    assert first == take(MixtureSampler(DATASETS, batch_size=4, seed=7), 50)
    assert first != take(MixtureSampler(DATASETS, batch_size=4, seed=8), 50)


def test_ranks_get_disjoint_slices_of_the_same_dataset():
    ranks = [MixtureSampler(DATASETS, batch_size=3, seed=1, rank=r, world_size=4) for r in range(4)]
    streams = [take(sampler, 40) for sampler in ranks]
    for step in range(40):
        names = {stream[step][0] for stream in streams}
        assert len(names) == 1  # one dataset, hence one prompt kind, per step on every rank
        indices = [i for stream in streams for i in stream[step][1]]
        size = DATASETS[names.pop()].size
        # Within one pass over a dataset no index repeats, across ranks included.
        assert len(indices) == 12 and all(0 <= i < size for i in indices)
        if size >= 12:
            assert len(set(indices)) == 12


def test_each_dataset_is_covered_before_any_sample_repeats():
    sampler = MixtureSampler({"a": MixtureEntry(10, 1.0, "category")}, batch_size=5, seed=0)
    batches = take(sampler, 4)
    assert sorted(batches[0][1] + batches[1][1]) == list(range(10))
    assert sorted(batches[2][1] + batches[3][1]) == list(range(10))


def test_ratios_are_respected():
    counts = Counter(name for name, _ in take(MixtureSampler(DATASETS, batch_size=1, seed=3), 4000))
    assert counts["coco"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert MixtureSampler(DATASETS, batch_size=1).prompt_kind("refcoco") == "expression"


def test_resume_continues_exactly():
    straight = take(MixtureSampler(DATASETS, batch_size=2, seed=4), 30)
    interrupted = MixtureSampler(DATASETS, batch_size=2, seed=4)
    head = take(interrupted, 12)
    state = interrupted.state_dict()
    resumed = MixtureSampler(DATASETS, batch_size=2, seed=4)
    resumed.load_state_dict(state)
    assert head + take(resumed, 18) == straight
    with pytest.raises(ValueError, match="seed 4 differs from 5"):
        MixtureSampler(DATASETS, batch_size=2, seed=5).load_state_dict(state)


@pytest.mark.parametrize(
    ("datasets", "kwargs", "message"),
    [
        ({}, {}, "datasets is empty"),
        ({"a": MixtureEntry(0, 1.0, "category")}, {}, "has no samples"),
        ({"a": MixtureEntry(3, 0.0, "category")}, {}, "positive ratio"),
        ({"a": MixtureEntry(3, 1.0, "category")}, {"batch_size": 0}, "batch_size must be >= 1"),
        (
            {"a": MixtureEntry(3, 1.0, "category")},
            {"rank": 2, "world_size": 2},
            r"rank must be in \[0, 2\)",
        ),
    ],
)
def test_bad_arguments(datasets, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixtureSampler(datasets, **{"batch_size": 2, **kwargs})
