from __future__ import annotations

import itertools

import pytest
import torch

from unipercept.criterion import HungarianMatcher
from unipercept.structures import box_convert, generalized_box_iou


def random_case(queries: int, targets: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, queries, 4, generator=generator)
    boxes = torch.cat(
        [
            torch.rand(1, queries, 2, generator=generator) * 0.6 + 0.2,
            torch.rand(1, queries, 2, generator=generator) * 0.3 + 0.05,
        ],
        -1,
    )
    labels = torch.randint(0, 4, (targets,), generator=generator)
    wanted = torch.cat(
        [
            torch.rand(targets, 2, generator=generator) * 0.6 + 0.2,
            torch.rand(targets, 2, generator=generator) * 0.3 + 0.05,
        ],
        -1,
    )
    return logits, boxes, labels, wanted


def pair_cost(logit: torch.Tensor, box: torch.Tensor, label: int, target: torch.Tensor) -> float:
    """The matching cost of one (query, target) pair, computed directly from its definition."""
    p = float(logit[label].sigmoid())
    positive = 0.25 * (1 - p) ** 2 * -torch.log(torch.tensor(p + 1e-8))
    negative = 0.75 * p**2 * -torch.log(torch.tensor(1 - p + 1e-8))
    l1 = float((box - target).abs().sum())
    giou = float(
        generalized_box_iou(
            box_convert(box[None], "cxcywh", "xyxy"), box_convert(target[None], "cxcywh", "xyxy")
        )[0, 0]
    )
    return 2.0 * float(positive - negative) + 5.0 * l1 - 2.0 * giou


@pytest.mark.parametrize(
    ("queries", "targets", "seed"), [(5, 3, 0), (4, 4, 1), (6, 2, 2), (3, 5, 3)]
)
def test_assignment_is_the_brute_force_optimum(queries, targets, seed):
    logits, boxes, labels, wanted = random_case(queries, targets, seed)
    ((rows, cols),) = HungarianMatcher()(logits, boxes, [labels], [wanted])
    assert len(rows) == len(cols) == min(queries, targets)
    assert rows.tolist() == sorted(rows.tolist()) and len(set(rows.tolist())) == len(rows)
    costs = [
        [pair_cost(logits[0, q], boxes[0, q], int(labels[t]), wanted[t]) for t in range(targets)]
        for q in range(queries)
    ]
    ours = sum(costs[q][t] for q, t in zip(rows.tolist(), cols.tolist(), strict=True))
    if queries >= targets:
        best = min(
            sum(costs[q][t] for t, q in enumerate(perm))
            for perm in itertools.permutations(range(queries), targets)
        )
    else:
        best = min(
            sum(costs[q][t] for q, t in enumerate(perm))
            for perm in itertools.permutations(range(targets), queries)
        )
    assert ours == pytest.approx(best, rel=1e-5, abs=1e-5)


def test_empty_targets_and_mixed_batches():
    logits, boxes, labels, wanted = random_case(5, 3, 4)
    matcher = HungarianMatcher()
    empty = torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4)
    ((rows, cols),) = matcher(logits, boxes, [empty[0]], [empty[1]])
    assert rows.numel() == 0 and cols.numel() == 0
    two = matcher(
        torch.cat([logits, logits]),
        torch.cat([boxes, boxes]),
        [labels, empty[0]],
        [wanted, empty[1]],
    )
    assert len(two[0][0]) == 3 and len(two[1][0]) == 0


def test_non_finite_predictions_still_match():
    logits, boxes, labels, wanted = random_case(4, 2, 5)
    boxes[0, 1] = float("nan")
    ((rows, _),) = HungarianMatcher()(logits, boxes, [labels], [wanted])
    assert len(rows) == 2 and 1 not in rows.tolist()


def test_all_zero_costs_are_refused():
    with pytest.raises(ValueError, match="at least one of cost_class"):
        HungarianMatcher(cost_class=0, cost_bbox=0, cost_giou=0)
