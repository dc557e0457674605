"""Coordinate-wise order statistics: the mean, the coordinate median (with bucketing) and the trimmed mean.

Each works on column blocks transposed to (width, n) and sorted along the short axis: numpy 2 sorts many short rows
with SIMD and no Python per column, several times faster than ``np.median(X, axis=0)`` on the (n, d) layout.
"""
from __future__ import annotations

import numpy as np

from shield_ps.byzantine.aggregators._blocks import (
    block_width, check_count, check_seed, column_blocks, combine_rows, for_each_block,
)


def mean(X: np.ndarray) -> np.ndarray:
    """The coordinate-wise mean, accumulated in float64 (the non-robust baseline)."""
    n = X.shape[0]
    return combine_rows(X, np.full(n, 1.0 / n))


def _sorted_block(X: np.ndarray, cols: slice) -> np.ndarray:
    block = np.ascontiguousarray(X[:, cols].T)
    block.sort(axis=1)
    return block


def median_rows(X: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The coordinate-wise median of the rows of X, equal to ``np.median(X, axis=0)`` (float32, the mean of the two
    middle values when n is even)."""
    n, d = X.shape
    out = np.empty(d, dtype=np.float32)
    half = n // 2

    def work(cols: slice) -> None:
        block = np.ascontiguousarray(X[:, cols].T)
        if n % 2:
            block.partition(half, axis=1)
            out[cols] = block[:, half]
        else:
            block.partition((half - 1, half), axis=1)
            out[cols] = (block[:, half - 1] + block[:, half]) / np.float32(2)

    for_each_block(X, work, threads)
    return out


def bucket_means(X: np.ndarray, buckets: int, seed: int) -> np.ndarray:
    """Shuffle the rows with ``default_rng(seed)``, split them into ``buckets`` nearly equal groups (``array_split``,
    as the original ByzShield code) and return the (buckets, d) float32 means of the groups."""
    n, d = X.shape
    groups = np.array_split(np.random.default_rng(seed).permutation(n), buckets)
    coef = np.zeros((buckets, n), dtype=np.float32)
    for b, rows in enumerate(groups):
        coef[b, rows] = 1.0 / len(rows)
    out = np.empty((buckets, d), dtype=np.float32)
    for cols in column_blocks(d, block_width(n)):
        np.matmul(coef, X[:, cols], out=out[:, cols])
    return out


def coord_median(X: np.ndarray, *, buckets: int | None = None, seed: int = 0,
                 threads: int | None = None) -> np.ndarray:
    """Coordinate-wise median of bucket means ("median of means", as in ByzShield's ``--bucket-size``).

    ``buckets`` = n (the default) is the plain coordinate median (Yin et al., ICML 2018); ``buckets`` = 1 is the mean.
    In between, rows are shuffled by a seeded RNG into ``buckets`` groups whose means enter the median.
    """
    n = X.shape[0]
    buckets = n if buckets is None else check_count("coord-median", "buckets", buckets, 1, n, f"n={n} rows")
    seed = check_seed("coord-median", seed)
    if buckets == n:
        return median_rows(X, threads)
    if buckets == 1:
        return mean(X)
    return median_rows(bucket_means(X, buckets, seed), threads)


def trimmed_mean(X: np.ndarray, *, s: int, threads: int | None = None) -> np.ndarray:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate, drop the s largest and the s smallest
    values and average the remaining n - 2s. Needs n >= 2s + 1."""
    n, d = X.shape
    s = check_count("trimmed-mean", "s", s, 0, (n - 1) // 2, f"trimmed-mean needs n >= 2s+1; n={n}")
    if s == 0:
        return mean(X)
    out = np.empty(d, dtype=np.float32)

    def work(cols: slice) -> None:
        # summing whole rows of the transposed-back block is SIMD; a mean along the short axis is not
        out[cols] = np.ascontiguousarray(_sorted_block(X, cols)[:, s:n - s].T).mean(axis=0, dtype=np.float64)

    for_each_block(X, work, threads)
    return out


def sorted_block(X: np.ndarray, cols: slice) -> np.ndarray:
    """The columns ``cols`` of X as a (width, n) array, each row sorted ascending (shared with Bulyan)."""
    return _sorted_block(X, cols)
