"""Shared machinery of the aggregators: input checks, column blocks and Gram-matrix passes.

Every aggregator reads its (n, d) float32 input in column blocks of about :data:`BLOCK_BYTES`, so the working set of
one block stays in cache and no aggregator holds more than a block-sized temporary beside its (d,) output. Quantities
that need the whole vectors (pairwise distances, distances to a point that is a combination of the rows) come from
the n x n Gram matrix, accumulated block by block in float64.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import numpy as np

from shield_ps.errors import AggregationError

#: Bytes of one (n, width) float32 column block; 1 MiB keeps a block in L2.
BLOCK_BYTES = 1 << 20

#: Threads of the sort-based aggregators by default (results do not depend on it: blocks are independent). One:
#: their blocks are many short numpy calls, and on the 2-core machine measured here two threads mostly queue for
#: the GIL (bulyan 2.0x multi-krum on one thread, 3.2x on two; coord-median 0.86 s vs 1.05 s). Pass ``threads=``
#: to use more on a machine where it pays.
DEFAULT_THREADS = 1


def block_width(n: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Columns per block for n rows of float32, a multiple of 64 and at least 256."""
    width = block_bytes // (4 * max(n, 1))
    return max(256, width - width % 64)


def column_blocks(d: int, width: int) -> Iterator[slice]:
    """Consecutive column slices of at most ``width`` covering ``range(d)``."""
    for start in range(0, d, width):
        yield slice(start, min(start + width, d))


def check_matrix(name: str, X: object) -> np.ndarray:
    """Return ``X`` if it is a 2-D float32 array with n >= 1 rows and d >= 1 columns, else raise AggregationError."""
    if not isinstance(X, np.ndarray):
        raise AggregationError(f"{name}: X must be a numpy array of shape (n, d), got {type(X).__name__}")
    if X.ndim != 2:
        raise AggregationError(f"{name}: X must have shape (n, d), got {X.ndim} dimension(s) {X.shape}")
    if X.dtype != np.float32:
        raise AggregationError(f"{name}: X must be float32, got {X.dtype}")
    n, d = X.shape
    if n < 1 or d < 1:
        raise AggregationError(f"{name}: X must have n >= 1 rows and d >= 1 columns, got shape {X.shape}")
    return X


def check_finite(name: str, X: np.ndarray) -> None:
    """Raise AggregationError naming the first row with a NaN or Inf (one blocked read pass)."""
    for cols in column_blocks(X.shape[1], block_width(X.shape[0])):
        bad = ~np.isfinite(X[:, cols])
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise AggregationError(
                f"{name}: row {int(row)} has a non-finite entry at column {int(col) + cols.start}; "
                "non-finite vectors must be rejected by the vote")


def check_count(name: str, label: str, value: object, low: int, high: int, why: str) -> int:
    """Return ``value`` as an int if ``low <= value <= high``, else raise AggregationError with the numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise AggregationError(f"{name}: {label} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise AggregationError(f"{name}: {label}={int(value)} out of range [{low}, {high}] ({why})")
    return int(value)


def check_seed(name: str, seed: object) -> int:
    """Return ``seed`` if it is a non-negative integer (for ``np.random.default_rng``), else raise AggregationError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise AggregationError(f"{name}: seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def for_each_block(X: np.ndarray, work: Callable[[slice], None], threads: int | None = None) -> None:
    """Call ``work(cols)`` for every column block of X, on ``threads`` threads (numpy releases the GIL in sort and
    in ufuncs, so two threads use two cores)."""
    threads = DEFAULT_THREADS if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
        raise AggregationError(f"threads must be an integer in [1, 64], got {threads!r}")
    blocks = list(column_blocks(X.shape[1], block_width(X.shape[0])))
    if threads == 1 or len(blocks) < 2:
        for cols in blocks:
            work(cols)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(work, blocks):
            pass


def gram(X: np.ndarray | Sequence[np.ndarray], extra: np.ndarray | None = None) -> np.ndarray:
    """The Gram matrix of the rows of X: float32 products per column block (BLAS syrk), summed in float64.

    No centring on purpose: a centre (mean or any row) would be dragged by an outlier at 1e6 and make every honest
    row large, while uncentred honest-honest products never involve the outlier; the float32 rounding then stays
    relative to the honest norms, far below the distances between distinct gradients. With ``extra`` (a (d,)
    vector) the result is the (n+1) x (n+1) Gram matrix of X with ``extra`` as a last row. X may also be a sequence
    of equal-length 1-D vectors.
    """
    n, d = len(X), X[0].shape[0]
    rows = n + (extra is not None)
    total = np.zeros((rows, rows), dtype=np.float64)
    direct = isinstance(X, np.ndarray) and extra is None
    width = block_width(rows)
    buf = None if direct else np.empty((rows, width), dtype=np.float32)
    for cols in column_blocks(d, width):
        if direct:
            block = X[:, cols]
        else:
            block = buf[:, : cols.stop - cols.start]
            for i in range(n):
                block[i] = X[i][cols]
            if extra is not None:
                block[n] = extra[cols]
        total += block @ block.T
    return total


def squared_distances(G: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances from a Gram matrix (clipped at 0, exact zeros on the diagonal)."""
    diag = np.diag(G)
    D = diag[:, None] + diag[None, :] - 2.0 * G
    np.maximum(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    return D


def distances_to_combination(G: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """Squared distances from every row to the point ``coef @ rows`` (``coef`` summing to 1), from the Gram matrix."""
    Gc = G @ coef
    return np.maximum(np.diag(G) - 2.0 * Gc + coef @ Gc, 0.0)


def combine_rows(X: np.ndarray, coef: np.ndarray, extra: np.ndarray | None = None,
                 extra_coef: float = 0.0) -> np.ndarray:
    """``coef @ X`` (+ ``extra_coef * extra``) as float32, one blocked BLAS gemv pass over X (float32 sums of n
    terms: a few ulp, as np.mean over the rows)."""
    n, d = X.shape
    out = np.empty(d, dtype=np.float32)
    coef32 = np.asarray(coef, dtype=np.float32)
    for cols in column_blocks(d, block_width(n)):
        np.matmul(coef32, X[:, cols], out=out[cols])
        if extra is not None and extra_coef:
            out[cols] += np.float32(extra_coef) * extra[cols]
    return out
