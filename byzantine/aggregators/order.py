"""Coordinate-wise order statistics: the mean, the coordinate median (with bucketing) and the trimmed mean.

All order statistics go through :func:`order_statistic`: per column block, a pruned sorting network of vectorised
min/max for a few rows (:mod:`.network`), or for many rows the block transposed to (width, k) and sorted along the
short axis (numpy 2 sorts short rows with SIMD). Both are several times faster than ``np.median(X, axis=0)``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from byzantine.aggregators._blocks import (
    BLOCK_BYTES,
    ORDER_BLOCK_BYTES_THREADED,
    block_width,
    check_count,
    check_seed,
    check_threads,
    combine_rows,
    for_each_block,
)
from byzantine.aggregators.network import NETWORK_MAX_ROWS, Rows, pruned_network, sort_rows, sum_rows


def mean(X: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """The coordinate-wise mean (the non-robust baseline), one blocked BLAS pass."""
    n = X.shape[0]
    return combine_rows(X, np.full(n, 1.0 / n), threads=threads)


def order_statistic(X: np.ndarray, rows: np.ndarray | None, needed: Iterable[int],
                    reduce: Callable[[Rows], np.ndarray], threads: int | None) -> np.ndarray:
    """Per column block of X (restricted to ``rows``, all if None): order the k values of every column, then
    ``reduce(ordered)``, where ``ordered[i]`` is the row of i-th smallest values for every position in ``needed``
    (the other positions hold the remaining values in no particular order). Small k: a pruned sorting network;
    larger k: numpy's sort of the transposed block. ``reduce`` must be element-wise per column (every caller's is):
    then neither the thread count nor the block width changes a bit of the result."""
    k = X.shape[0] if rows is None else len(rows)
    network = pruned_network(k, frozenset(needed)) if k <= NETWORK_MAX_ROWS else None
    out = np.empty(X.shape[1], dtype=np.float32)
    threads = check_threads(threads)
    width = block_width(k, ORDER_BLOCK_BYTES_THREADED if threads > 1 else BLOCK_BYTES)
    width = min(width, max(256, -(-X.shape[1] // (4 * threads))))  # scratch: at most a quarter of X in all

    def make_work() -> Callable[[slice], None]:
        scratch = np.empty((k, width), dtype=np.float32)

        def work(cols: slice) -> None:
            block = scratch[:, : cols.stop - cols.start]
            if rows is None:
                np.copyto(block, X[:, cols])
            else:
                np.take(X[:, cols], rows, axis=0, out=block)
            if network is not None:
                out[cols] = reduce(sort_rows(block, network))
                return
            transposed = np.ascontiguousarray(block.T)
            transposed.sort(axis=1)
            out[cols] = reduce(np.ascontiguousarray(transposed.T))
        return work

    for_each_block(X, make_work, threads, width=width)
    return out


def median_positions(k: int) -> tuple[int, ...]:
    """The sorted positions whose mean is the median of k values."""
    return (k // 2,) if k % 2 else (k // 2 - 1, k // 2)


def median_of(ordered: Rows) -> np.ndarray:
    """The median row of ordered rows, as ``np.median`` computes it (float32 mean of the two middle values)."""
    k = len(ordered)
    return ordered[k // 2] if k % 2 else (ordered[k // 2 - 1] + ordered[k // 2]) / np.float32(2)


def median_rows(X: np.ndarray, threads: int | None = None) -> np.ndarray:
    """The coordinate-wise median of the rows of X, equal to ``np.median(X, axis=0)``."""
    return order_statistic(X, None, median_positions(X.shape[0]), median_of, threads)


def bucket_means(X: np.ndarray, buckets: int, seed: int, threads: int | None = None) -> np.ndarray:
    """Shuffle the rows with ``default_rng(seed)``, split them into ``buckets`` nearly equal groups (``array_split``,
    as the original ByzShield code) and return the (buckets, d) float32 means of the groups."""
    n, d = X.shape
    groups = np.array_split(np.random.default_rng(seed).permutation(n), buckets)
    coef = np.zeros((buckets, n), dtype=np.float32)
    for b, rows in enumerate(groups):
        coef[b, rows] = 1.0 / len(rows)
    out = np.empty((buckets, d), dtype=np.float32)

    def make_work() -> Callable[[slice], None]:
        def work(cols: slice) -> None:
            np.matmul(coef, X[:, cols], out=out[:, cols])
        return work

    for_each_block(X, make_work, threads)
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
        return mean(X, threads=threads)
    return median_rows(bucket_means(X, buckets, seed, threads), threads)


def trimmed_mean(X: np.ndarray, *, s: int, threads: int | None = None) -> np.ndarray:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018): per coordinate, drop the s largest and the s smallest
    values and average the remaining n - 2s. Needs n >= 2s + 1."""
    n, d = X.shape
    s = check_count("trimmed-mean", "s", s, 0, (n - 1) // 2, f"trimmed-mean needs n >= 2s+1; n={n}")
    if s == 0:
        return mean(X, threads=threads)
    return order_statistic(X, None, trimmed_positions(n, s), lambda rows: sum_rows(rows[s:n - s]) / (n - 2 * s),
                           threads)


def trimmed_positions(k: int, s: int) -> tuple[int, ...]:
    """The sorted positions a trimmed mean must identify: the s smallest and the s largest of k."""
    return tuple(range(s)) + tuple(range(k - s, k))
