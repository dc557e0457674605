"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017), with distances from the float64 Gram matrix.

The Gram identity ``|x_i - x_j|^2 = G_ii + G_jj - 2 G_ij`` costs one blocked pass over X instead of n(n-1)/2
subtractions of d-vectors.
"""
from __future__ import annotations

import numpy as np

from byzantine.aggregators._blocks import check_count, combine_rows, gram, squared_distances
from byzantine.errors import AggregationError


def check_krum_s(name: str, n: int, s: object) -> int:
    """Return s if Krum's precondition n >= 2s + 3 holds, else raise AggregationError naming n and s."""
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
        raise AggregationError(f"{name}: s must be a non-negative integer, got {s!r}")
    if n < 2 * int(s) + 3:
        raise AggregationError(f"{name} needs n >= 2s+3; got n={n}, s={int(s)} (n must be >= {2 * int(s) + 3})")
    return int(s)


def krum_scores(D: np.ndarray, neighbours: int) -> np.ndarray:
    """Krum scores: for each i, the sum of its squared distances to its ``neighbours`` nearest other vectors
    (Krum uses n - s - 2)."""
    n = D.shape[0]
    others = D[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    return np.sort(others, axis=1)[:, :neighbours].sum(axis=1)


def best_by_score(scores: np.ndarray, m: int, D: np.ndarray) -> np.ndarray:
    """Indices of the m lowest scores. Ties (e.g. two mutually nearest vectors scored by one neighbour) go to the
    lower sum of squared distances to all others, then to the lower index, so the choice does not depend on the
    order of the inputs unless the data are degenerate."""
    return np.lexsort((np.arange(len(scores)), D.sum(axis=1), scores))[:m]


def krum(X: np.ndarray, *, s: int, threads: int | None = None) -> np.ndarray:
    """Krum: the single input vector with the lowest Krum score. Needs n >= 2s + 3."""
    s = check_krum_s("krum", X.shape[0], s)
    D = squared_distances(gram(X, threads=threads))
    return X[int(best_by_score(krum_scores(D, X.shape[0] - s - 2), 1, D)[0])].copy()


def multi_krum(X: np.ndarray, *, s: int, m: int | None = None, threads: int | None = None) -> np.ndarray:
    """Multi-Krum: the mean of the m vectors with the lowest Krum scores (default m = n - s). Needs n >= 2s + 3."""
    n = X.shape[0]
    s = check_krum_s("multi-krum", n, s)
    m = n - s if m is None else check_count("multi-krum", "m", m, 1, n, f"n={n}")
    D = squared_distances(gram(X, threads=threads))
    chosen = best_by_score(krum_scores(D, n - s - 2), m, D)
    coef = np.zeros(n)
    coef[chosen] = 1.0 / m
    return combine_rows(X, coef, threads=threads)


def multi_krum_byzshield(X: np.ndarray, *, s: int, threads: int | None = None) -> np.ndarray:
    """Multi-Krum as the original ByzShield code runs it: it averages the n - s - 2 best-scored vectors (the same
    count as the neighbours in a score) instead of n - s. Needs n >= 2s + 3."""
    n = X.shape[0]
    s = check_krum_s("multi-krum-byzshield", n, s)
    return multi_krum(X, s=s, m=n - s - 2, threads=threads)
