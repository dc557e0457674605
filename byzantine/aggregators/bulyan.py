"""Bulyan (El Mhamdi, Guerraoui and Rouault, ICML 2018) and the one-shot variant of the original ByzShield code.

Bulyan first selects theta = n - 2s vectors by repeated Krum (each round picks the best-scored vector among those
left and removes it), then, coordinate by coordinate, averages the beta = theta - 2s selected values closest to
their median. The selection runs on one Gram matrix, the coordinate stage on the shared blocked order statistic.
"""
from __future__ import annotations

import numpy as np

from byzantine.aggregators._blocks import gram, squared_distances
from byzantine.aggregators.krum import best_by_score, krum_scores
from byzantine.aggregators.network import Rows, sum_rows
from byzantine.aggregators.order import median_of, median_positions, order_statistic, trimmed_positions
from byzantine.errors import AggregationError


def _check_s(name: str, n: int, s: object, factor: int) -> int:
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
        raise AggregationError(f"{name}: s must be a non-negative integer, got {s!r}")
    need = factor * int(s) + 3
    if n < need:
        raise AggregationError(f"{name} needs n >= {factor}s+3; got n={n}, s={int(s)} (n must be >= {need})")
    return int(s)


def iterated_krum(D: np.ndarray, s: int, count: int) -> np.ndarray:
    """Indices chosen by ``count`` rounds of Krum on the vectors not chosen yet (Bulyan's selection stage).

    A round on n' vectors scores each by its max(1, n' - s - 2) nearest remaining neighbours, as Flower's Bulyan.
    """
    left = list(range(D.shape[0]))
    chosen: list[int] = []
    for _ in range(count):
        if len(left) == 1:
            chosen.append(left.pop())
            continue
        sub = D[np.ix_(left, left)]
        neighbours = min(max(len(left) - s - 2, 1), len(left) - 1)
        best = int(best_by_score(krum_scores(sub, neighbours), 1, sub)[0])
        chosen.append(left.pop(best))
    return np.asarray(chosen, dtype=np.intp)


def best_window(S: Rows, beta: int, med: np.ndarray) -> np.ndarray:
    """Per column, the start k (0..theta-beta) of the ``beta``-window of the sorted values S[k..k+beta-1] whose
    farthest value is nearest the median ``med``; the lowest such k on ties. Radii are compared in float32 and k
    is kept as small integers: one pass of cheap row operations per candidate window."""
    theta = len(S)
    best_radius = np.maximum(med - S[0], S[beta - 1] - med)
    best = np.zeros(best_radius.shape, dtype=np.min_scalar_type(theta - beta))
    radius, upper = np.empty_like(best_radius), np.empty_like(best_radius)
    better, shifted = np.empty(best_radius.shape, dtype=bool), np.empty_like(best)
    for k in range(1, theta - beta + 1):
        np.subtract(med, S[k], out=radius)
        np.subtract(S[k + beta - 1], med, out=upper)
        np.maximum(radius, upper, out=radius)
        np.less(radius, best_radius, out=better)
        np.minimum(best_radius, radius, out=best_radius)
        # k grows, so "best = k where better" is max(best, better * k): no masked selection (np.where or copyto
        # cost ~10 ns an element on random masks, these integer row operations ~0.3 ns).
        np.multiply(better, best.dtype.type(k), out=shifted)
        np.maximum(best, shifted, out=best)
    return best


def closest_to_median_mean(S: Rows, beta: int) -> np.ndarray:
    """For theta ordered rows S (row i = the i-th smallest value of every column, at least at positions 0..theta-beta,
    beta-1..theta-1 and the median): per column, the mean of the ``beta`` values closest to the column's median.

    Those values form a contiguous window of the sorted column; of the theta - beta + 1 windows the one whose
    farthest value is nearest the median wins (the lower window on ties, :func:`best_window`). The window starting
    at k holds row j iff k <= j <= k + beta - 1: rows m..beta-1 (m = theta - beta) always, the others by a 0/1
    mask. Masked values are exact in float32 (x * 1, x * 0 + y), the sum is float64.
    """
    theta = len(S)
    m = theta - beta
    best = best_window(S, beta, median_of(S))
    total = sum_rows(S[m:beta]) if m < beta else np.zeros(best.shape)
    keep, bound = np.empty(best.shape, dtype=bool), np.empty(best.shape, dtype=bool)
    mask, picked, other = (np.empty(best.shape, dtype=np.float32) for _ in range(3))
    wide = np.empty_like(total)

    def masked(j: int, out: np.ndarray) -> None:
        """out = S[j] where the best window holds row j, else 0."""
        keep.fill(True)
        if j < m:
            np.less_equal(best, j, out=keep)
        if j >= beta:
            np.greater_equal(best, j - beta + 1, out=bound)
            np.logical_and(keep, bound, out=keep)
        mask[...] = keep
        np.multiply(S[j], mask, out=out)

    # For m < beta, rows j and beta + j (j < m) are never both in a window and one of them always is: their
    # masked sum is exactly that value, added to the float64 total as one row.
    groups = [(j, beta + j) for j in range(m)] if m < beta else [(j,) for j in range(theta)]
    for first, *rest in groups:
        masked(first, picked)
        for j in rest:
            masked(j, other)
            picked += other
        wide[...] = picked  # float32 -> float64 into a buffer, then a plain float64 add: faster than a mixed add
        total += wide
    return total / beta


def window_positions(theta: int, beta: int) -> tuple[int, ...]:
    """The sorted positions :func:`closest_to_median_mean` reads one by one."""
    return tuple(range(theta - beta + 1)) + tuple(range(beta - 1, theta)) + median_positions(theta)


def bulyan(X: np.ndarray, *, s: int, threads: int | None = None) -> np.ndarray:
    """Bulyan over Krum: theta = n - 2s vectors chosen by iterated Krum, then per coordinate the mean of the
    beta = n - 4s values closest to their median. Needs n >= 4s + 3."""
    n = X.shape[0]
    s = _check_s("bulyan", n, s, 4)
    theta, beta = n - 2 * s, n - 4 * s
    chosen = iterated_krum(squared_distances(gram(X, threads=threads)), s, theta) if s else np.arange(n)
    return order_statistic(X, np.sort(chosen), window_positions(theta, beta),
                           lambda S: closest_to_median_mean(S, beta), threads)


def bulyan_byzshield(X: np.ndarray, *, s: int, threads: int | None = None) -> np.ndarray:
    """Bulyan as the original ByzShield code runs it: the n - s - 2 best Krum scores are selected in one shot, then
    per coordinate the s largest and s smallest selected values are dropped and the middle n - 3s - 2 averaged
    (its centred index window). Needs n >= 3s + 3 so that one value is left."""
    n = X.shape[0]
    s = _check_s("bulyan-byzshield", n, s, 3)
    theta = n - s - 2
    D = squared_distances(gram(X, threads=threads))
    chosen = best_by_score(krum_scores(D, n - s - 2), theta, D)
    return order_statistic(X, np.sort(chosen), trimmed_positions(theta, s),
                           lambda S: sum_rows(S[s:theta - s]) / (theta - 2 * s), threads)
