"""The sorting networks behind the coordinate-wise order statistics."""
from __future__ import annotations

import numpy as np
import pytest

from byzantine.aggregators.network import batcher_network, pruned_network, sort_rows


@pytest.mark.parametrize("n", range(1, 41))
def test_network_sorts_with_ties(n: int) -> None:
    X = np.random.default_rng(n).integers(-3, 4, size=(n, 200)).astype(np.float32)
    assert np.array_equal(np.stack(sort_rows(X.copy(), batcher_network(n))), np.sort(X, axis=0))


@pytest.mark.parametrize("n", [5, 20, 25, 32])
def test_pruned_network_fixes_the_needed_positions_and_keeps_the_rest(n: int) -> None:
    X = np.random.default_rng(100 + n).standard_normal((n, 300)).astype(np.float32)
    needed = frozenset({0, 1, n // 2, n - 2, n - 1})
    rows = sort_rows(X.copy(), pruned_network(n, needed))
    reference = np.sort(X, axis=0)
    for i in needed:
        assert np.array_equal(rows[i], reference[i])
    assert np.array_equal(np.sort(np.stack(rows), axis=0), reference)  # the others: the same values, any order
    assert len(pruned_network(n, needed)) <= len(batcher_network(n))
