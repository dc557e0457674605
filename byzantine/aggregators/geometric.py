"""Aggregators that iterate on a point in the span of the inputs: the geometric median (Weiszfeld) and centred
clipping (Karimireddy, He and Jaggi, ICML 2021).

Every iterate is an affine combination ``coef @ X`` (plus ``c0 * v0`` for clipping), so the distances each step
needs come from the float64 Gram matrix in O(n^2), and X is read only twice: once for the Gram matrix and once for
the final combination.
"""
from __future__ import annotations

import numpy as np

from byzantine.aggregators._blocks import combine_rows, distances_to_combination, gram
from byzantine.errors import AggregationError


def _positive(name: str, label: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not value > 0:
        raise AggregationError(f"{name}: {label} must be a positive number, got {value!r}")
    return float(value)


def _iterations(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 100_000:
        raise AggregationError(f"{name}: iterations must be an integer in [1, 100000], got {value!r}")
    return int(value)


def weiszfeld_coefficients(G: np.ndarray, max_iter: int, tol: float) -> np.ndarray:
    """Weiszfeld's iteration z <- sum_i w_i x_i / sum_i w_i, w_i = 1 / |x_i - z|, started at the mean and run on
    the coefficients of z over the rows. Distances are floored at a tiny fraction of the spread so that an iterate
    landing on an input point stays finite (the usual smoothing, as in hdmedians)."""
    n = G.shape[0]
    coef = np.full(n, 1.0 / n)
    floor = 1e-12 * max(float(np.sqrt(np.max(np.diag(G), initial=0.0))), 1e-30)
    for _ in range(max_iter):
        dist = np.maximum(np.sqrt(distances_to_combination(G, coef)), floor)
        weights = 1.0 / dist
        new = weights / weights.sum()
        done = np.abs(new - coef).max() <= tol
        coef = new
        if done:
            break
    return coef


def geometric_median(X: np.ndarray, *, max_iter: int = 1000, tol: float = 1e-10,
                     threads: int | None = None) -> np.ndarray:
    """The geometric median (the point minimising the sum of Euclidean distances to the rows) by Weiszfeld's
    algorithm (Pillutla, Kakade and Harchaoui's RFA uses the same smoothed iteration). ``tol`` bounds the change of
    the row weights between iterations."""
    max_iter = _iterations("geometric-median", max_iter)
    tol = _positive("geometric-median", "tol", tol)
    return combine_rows(X, weiszfeld_coefficients(gram(X, threads=threads), max_iter, tol), threads=threads)


def centered_clipping(X: np.ndarray, *, tau: float = 10.0, iters: int = 3,
                      center: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """Centred clipping (Karimireddy et al., ICML 2021): ``iters`` times
    v <- v + mean_i (x_i - v) min(1, tau / |x_i - v|), from ``center`` (the previous step's aggregate or momentum;
    zeros if None)."""
    n, d = X.shape
    tau = _positive("centered-clipping", "tau", tau)
    iters = _iterations("centered-clipping", iters)
    if center is None:
        center = np.zeros(d, dtype=np.float32)
    elif not isinstance(center, np.ndarray) or center.shape != (d,):
        got = center.shape if isinstance(center, np.ndarray) else type(center).__name__
        raise AggregationError(f"centered-clipping: center must be a numpy array of shape ({d},), got {got}")
    G = gram(X, extra=center, threads=threads)
    coef = np.zeros(n + 1)
    coef[n] = 1.0
    for _ in range(iters):
        dist = np.sqrt(distances_to_combination(G, coef))[:n]
        scale = np.minimum(1.0, tau / np.maximum(dist, 1e-300))
        coef *= 1.0 - scale.mean()
        coef[:n] += scale / n
    return combine_rows(X, coef[:n], extra=center.astype(np.float32, copy=False), extra_coef=float(coef[n]),
                        threads=threads)
