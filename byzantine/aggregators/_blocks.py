"""Shared machinery of the aggregators: input checks, column blocks and Gram-matrix passes.

Every aggregator reads its (n, d) float32 input in column blocks of about :data:`BLOCK_BYTES`, so the working set of
one block stays in cache and no aggregator holds more than a block-sized temporary beside its (d,) output. Quantities
that need the whole vectors (pairwise distances, distances to a point that is a combination of the rows) come from
the n x n Gram matrix, accumulated block by block in float64.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

import numpy as np

from byzantine.errors import AggregationError

#: Bytes of one (n, width) float32 column block; 1 MiB keeps a block in L2.
BLOCK_BYTES = 1 << 20

#: Threads of every aggregator by default: one per core. Results do not depend on it (see :func:`for_each_block`).
DEFAULT_THREADS = max(1, min(os.cpu_count() or 1, 64))

#: Bytes of one column block of the order statistics when they run on several threads. Their sorting network is
#: ~2 numpy calls per comparator per block; at 1 MiB blocks a call computes for about as long as the interpreter
#: holds the GIL around it, so two threads queue for the GIL. 8 MiB blocks (L3-resident, 2 x 8 MiB < 32 MiB) make
#: the GIL share of a call a few percent. Order statistics do not depend on the block width (exact element-wise
#: min/max and float64 row sums), unlike the BLAS passes, whose blocks never change.
ORDER_BLOCK_BYTES_THREADED = 8 << 20

MAX_THREADS = 64


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


def check_threads(threads: object) -> int:
    """``threads`` as an int (None: :data:`DEFAULT_THREADS`), or AggregationError if it is not in [1, 64]."""
    if threads is None:
        return DEFAULT_THREADS
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= MAX_THREADS:
        raise AggregationError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
    return int(threads)


T = TypeVar("T")


def split_contiguous(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``items`` cut into at most ``parts`` contiguous, nearly equal, non-empty runs (in order)."""
    parts = max(1, min(parts, len(items)))
    bounds = [len(items) * i // parts for i in range(parts + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(parts)]


def run_parts(parts: Sequence[T], task: Callable[[T], None]) -> None:
    """``task(part)`` for every part, each on its own thread (the calling thread takes the first); re-raises the
    first failure."""
    if len(parts) == 1:
        task(parts[0])
        return
    with ThreadPoolExecutor(max_workers=len(parts) - 1, thread_name_prefix="shield-agg") as pool:
        futures = [pool.submit(task, part) for part in parts[1:]]
        try:
            task(parts[0])
        finally:
            for future in futures:
                future.result()


def for_each_block(X: np.ndarray, make_work: Callable[[], Callable[[slice], None]], threads: int | None = None,
                   *, width: int | None = None) -> None:
    """Call ``work(cols)`` for every column block of X (``width`` columns, :func:`block_width` by default), where
    each thread makes its own ``work = make_work()`` (its scratch buffers) and runs it over one contiguous range of
    blocks: a whole kernel per thread on its own slice of coordinates, with no hand-off per block.

    The blocks are the same whatever the thread count and every block is computed by the same calls, so a result
    that is a function of each block alone is bit-identical on 1 and on 64 threads."""
    threads = check_threads(threads)
    blocks = list(column_blocks(X.shape[1], width or block_width(X.shape[0])))

    def task(part: Sequence[slice]) -> None:
        work = make_work()
        for cols in part:
            work(cols)

    run_parts(split_contiguous(blocks, threads), task)


def gram(X: np.ndarray | Sequence[np.ndarray], extra: np.ndarray | None = None,
         threads: int | None = None) -> np.ndarray:
    """The Gram matrix of the rows of X: float32 products per column block (BLAS syrk), summed in float64.

    No centring on purpose: a centre (mean or any row) would be dragged by an outlier at 1e6 and make every honest
    row large, while uncentred honest-honest products never involve the outlier; the float32 rounding then stays
    relative to the honest norms, far below the distances between distinct gradients. With ``extra`` (a (d,)
    vector) the result is the (n+1) x (n+1) Gram matrix of X with ``extra`` as a last row. X may also be a sequence
    of equal-length 1-D vectors.

    On several threads each thread computes the products of its own range of blocks; they are summed in block
    order afterwards, so the float64 sum (and the result) is bit-identical to one thread's.
    """
    n, d = len(X), X[0].shape[0]
    rows = n + (extra is not None)
    matrix = X if isinstance(X, np.ndarray) and extra is None else None  # read blocks straight from X
    width = block_width(rows)
    blocks = list(column_blocks(d, width))
    products = np.empty((len(blocks), rows, rows), dtype=np.float32)

    def task(part: Sequence[tuple[int, slice]]) -> None:
        buf = np.empty((rows, width), dtype=np.float32) if matrix is None else None
        for index, cols in part:
            if matrix is not None:
                block = matrix[:, cols]
            else:
                block = cast(np.ndarray, buf)[:, : cols.stop - cols.start]
                for i in range(n):
                    block[i] = X[i][cols]
                if extra is not None:
                    block[n] = extra[cols]
            np.matmul(block, block.T, out=products[index])

    run_parts(split_contiguous(list(enumerate(blocks)), check_threads(threads)), task)
    total = np.zeros((rows, rows), dtype=np.float64)
    for product in products:
        total += product
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
                 extra_coef: float = 0.0, threads: int | None = None) -> np.ndarray:
    """``coef @ X`` (+ ``extra_coef * extra``) as float32, one blocked BLAS gemv pass over X (float32 sums of n
    terms: a few ulp, as np.mean over the rows). Blocks are independent, so threads do not change the result."""
    n, d = X.shape
    out = np.empty(d, dtype=np.float32)
    coef32 = np.asarray(coef, dtype=np.float32)

    def make_work() -> Callable[[slice], None]:
        def work(cols: slice) -> None:
            np.matmul(coef32, X[:, cols], out=out[cols])
            if extra is not None and extra_coef:
                out[cols] += np.float32(extra_coef) * extra[cols]
        return work

    for_each_block(X, make_work, threads)
    return out
