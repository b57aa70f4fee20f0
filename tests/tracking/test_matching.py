"""The association pieces the trackers share."""

from __future__ import annotations

import torch

from unipercept.tracking.matching import greedy_match


def test_greedy_match_lets_rows_choose_in_order():
    # Row 0 (the best-scored detection) takes column 0 although row 1 is more similar to it;
    # row 1 then takes its best free column, and row 2 finds none above the threshold.
    similarity = torch.tensor([[0.6, 0.1, 0.0], [0.9, 0.7, 0.0], [0.2, 0.3, 0.4]])
    assert greedy_match(similarity, 0.5).tolist() == [0, 1, -1]
    # Strictly above the threshold; no rows or no columns match nothing.
    assert greedy_match(similarity, 0.9).tolist() == [-1, -1, -1]
    assert greedy_match(torch.zeros(0, 3), 0.5).tolist() == []
    assert greedy_match(torch.zeros(2, 0), 0.5).tolist() == [-1, -1]
    assert greedy_match(similarity, 0.5).dtype == torch.int64
