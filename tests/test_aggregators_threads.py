"""Aggregation on several threads is bit-identical to one thread (issue 16), for every aggregator.

The coordinate-wise ones split the coordinates into contiguous ranges, one per thread (and use wider blocks on
several threads); the Gram-matrix ones compute each block's products on some thread and sum them in block order.
Inputs are sized to span several blocks on every thread, with outliers and ties so the order statistics, the Krum
selections and the Weiszfeld weights all have work to do.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzantine.aggregators import aggregator_params, uses_byzantine_count
from byzantine.aggregators._blocks import gram, split_contiguous
from byzantine.errors import AggregationError
from shield_ps import AGGREGATORS, aggregate

F32 = np.float32


def _params(name: str, n: int) -> dict:
    if not uses_byzantine_count(name):
        return {}
    factor = {"bulyan": 4, "bulyan-byzshield": 3}.get(name, 2)
    return {"s": max(0, min(2, (n - 3) // factor))}


def _matrix(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(F32)
    X[: max(1, n // 5)] *= 50  # outliers
    X[:, :: 7] = np.round(X[:, :: 7])  # ties within columns
    return X


@pytest.mark.parametrize("name", AGGREGATORS)
def test_threads_are_bit_identical_to_one_thread(name: str) -> None:
    X = _matrix(25, 70_001, 1)
    params = _params(name, 25)
    one = aggregate(name, X, threads=1, **params)
    for threads in (2, 3, 8):
        np.testing.assert_array_equal(aggregate(name, X, threads=threads, **params), one,
                                      err_msg=f"{name} on {threads} threads")


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 40), d=st.integers(1, 30_000), threads=st.integers(2, 6), seed=st.integers(0, 2**31),
       name=st.sampled_from(AGGREGATORS))
def test_threads_property(n: int, d: int, threads: int, seed: int, name: str) -> None:
    X = _matrix(n, d, seed)
    params = _params(name, n)
    try:
        one = aggregate(name, X, threads=1, **params)
    except AggregationError:  # preconditions (n against s) fail alike on any thread count
        with pytest.raises(AggregationError):
            aggregate(name, X, threads=threads, **params)
        return
    np.testing.assert_array_equal(aggregate(name, X, threads=threads, **params), one)


@pytest.mark.parametrize("kwargs", [{"buckets": 5, "seed": 3}, {"buckets": 1}])
def test_bucketed_median_and_sign_threads(kwargs: dict) -> None:
    X = _matrix(20, 50_000, 2)
    for name in ("coord-median", "sign-sgd"):
        np.testing.assert_array_equal(aggregate(name, X, threads=3, **kwargs), aggregate(name, X, threads=1, **kwargs))


def test_gram_with_extra_row_threads() -> None:
    X = _matrix(9, 300_000, 4)
    rows = list(X)
    np.testing.assert_array_equal(gram(rows, extra=X[0] * 2, threads=4), gram(rows, extra=X[0] * 2, threads=1))
    np.testing.assert_array_equal(gram(X, threads=2), gram(X, threads=1))


def test_every_aggregator_takes_threads_and_validates_it() -> None:
    for name in AGGREGATORS:
        assert "threads" in aggregator_params(name), name
    X = _matrix(9, 10, 0)
    for bad in (0, 65, 1.5, True):
        with pytest.raises(AggregationError, match=r"threads must be an integer in \[1, 64\]"):
            aggregate("multi-krum", X, s=1, threads=bad)


def test_split_contiguous_covers_in_order() -> None:
    for items, parts in ((list(range(10)), 3), (list(range(2)), 5), (list(range(7)), 1)):
        pieces = split_contiguous(items, parts)
        assert [x for piece in pieces for x in piece] == items
        assert all(pieces) and len(pieces) == min(parts, len(items))
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1
