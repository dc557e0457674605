"""signSGD with majority vote (Bernstein et al., ICLR 2019), with the bucketing of the original ByzShield code."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from byzantine.aggregators._blocks import check_count, check_seed, for_each_block


def sign_sgd(X: np.ndarray, *, buckets: int | None = None, seed: int = 0,
             threads: int | None = None) -> np.ndarray:
    """The coordinate-wise majority of signs, as float32 in {-1, 0, 1}.

    With ``buckets`` = N < n the rows are shuffled by ``default_rng(seed)`` into N groups; each group votes with the
    sign of the sum of its rows' signs and the output is the sign of the sum of the group votes (the original code's
    two-stage vote: its workers send sign(g) as int8, so each bucket sums signs, not raw gradients).
    """
    n, d = X.shape
    buckets = n if buckets is None else check_count("sign-sgd", "buckets", buckets, 1, n, f"n={n} rows")
    seed = check_seed("sign-sgd", seed)
    groups = [np.sort(g) for g in np.array_split(np.random.default_rng(seed).permutation(n), buckets)]
    out = np.empty(d, dtype=np.float32)

    def work(cols: slice) -> None:
        block = X[:, cols]
        if buckets == n:  # each row is its own group: a plain majority of signs
            votes = np.sign(block).sum(axis=0)
        else:
            signs = np.sign(block)
            votes = sum(np.sign(signs[rows].sum(axis=0)) for rows in groups)
        out[cols] = np.sign(votes)

    def make_work() -> Callable[[slice], None]:
        return work

    for_each_block(X, make_work, threads)
    return out
