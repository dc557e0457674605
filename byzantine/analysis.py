"""Worst-case analysis of a placement (ByzShield, Konstantinidis & Ramamoorthy, MLSys 2021, Sec. 5).

For q Byzantine workers: the exact c_max(q) and a set achieving it (:mod:`byzantine.worst_case`), the
distorted fraction epsilon = c_max/f, the fractions of the baseline (q/K) and of DETOX/FRC (floor(q/r')*r/K), and
the upper bound gamma of Claim 1, which comes from the spectrum of the normalized biadjacency matrix A = H/sqrt(l*r).
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from byzantine.placement import Placement
from byzantine.worst_case import WorstCase, distorted, worst_case

__all__ = ["Analysis", "AnalysisRow", "Spectrum", "WorstCase", "analyze", "claim1_gamma", "distorted",
           "spectrum", "worst_case"]


@dataclass(frozen=True)
class Spectrum:
    """Spectral facts of a placement: ``mu1`` is the second largest eigenvalue of A A^T with A = H/sqrt(l*r),
    ``sigma2`` the second largest singular value of the 0/1 biadjacency H, and ``ramanujan`` whether
    sigma2 <= sqrt(l-1) + sqrt(r-1) (the bipartite Ramanujan bound)."""

    mu1: float
    sigma2: float
    ramanujan: bool


def spectrum(placement: Placement) -> Spectrum:
    """The :class:`Spectrum` of ``placement`` (ByzShield Sec. 5; Burnwal, Sinha and Vidyasagar for the bound)."""
    H = placement.biadjacency().astype(np.float64)
    singular = np.linalg.svd(H, compute_uv=False)
    sigma2 = float(singular[1]) if len(singular) > 1 else 0.0
    mu1 = sigma2 ** 2 / (placement.l * placement.r)
    bound = math.sqrt(placement.l - 1) + math.sqrt(placement.r - 1)
    return Spectrum(mu1=_clean(mu1), sigma2=_clean(sigma2), ramanujan=bool(sigma2 <= bound + 1e-9))


def _clean(x: float) -> float:
    """Round away floating-point dust (1/3 stays 1/3 to 12 digits; 1e-16 becomes 0)."""
    return round(x, 12) + 0.0


def claim1_gamma(placement: Placement, q: int, mu1: float) -> float | None:
    """Claim 1's upper bound on c_max: beta = (q*l/r) / (mu1 + (1-mu1)*q/K), gamma = (q*l - beta) / ((r-1)/2).

    None where it is undefined (r = 1: no majority to win).
    """
    l, r, K = placement.l, placement.r, placement.K  # noqa: E741 (the paper's l: files per worker)
    if r == 1:
        return None
    if q == 0:
        return 0.0
    beta = (q * l / r) / (mu1 + (1 - mu1) * q / K)
    return (q * l - beta) / ((r - 1) / 2)


@dataclass(frozen=True)
class AnalysisRow:
    """One q: the worst case and the paper's fractions (``epsilon_frc`` is capped at 1)."""

    q: int
    c_max: int
    exact: bool
    upper_bound: int
    epsilon: float
    epsilon_baseline: float
    epsilon_frc: float
    gamma: float | None
    worst_set: tuple[int, ...]
    seconds: float


@dataclass(frozen=True)
class Analysis:
    """A placement's worst-case table."""

    scheme: str
    K: int
    f: int
    l: int  # noqa: E741 (the paper's l: files per worker)
    r: int
    mu1: float
    sigma2: float
    ramanujan: bool
    rows: tuple[AnalysisRow, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``shield-ps analyze --format json`` (timings left out: they are not results)."""
        doc = asdict(self)
        doc["rows"] = [{k: (list(v) if k == "worst_set" else v) for k, v in asdict(row).items() if k != "seconds"}
                       for row in self.rows]
        return doc


def analysis_row(placement: Placement, q: int, mu1: float, time_limit: float | None = None) -> AnalysisRow:
    """The worst case for q Byzantine workers with the paper's fractions next to it."""
    started = time.monotonic()
    wc = worst_case(placement, q, time_limit)
    seconds = time.monotonic() - started
    frc = min(1.0, (q // placement.r_prime) * placement.r / placement.K)
    return AnalysisRow(q=q, c_max=wc.c_max, exact=wc.exact, upper_bound=wc.upper_bound,
                       epsilon=wc.c_max / placement.f, epsilon_baseline=q / placement.K, epsilon_frc=frc,
                       gamma=claim1_gamma(placement, q, mu1), worst_set=wc.worst_set, seconds=seconds)


def analyze(placement: Placement, qs: Iterable[int], time_limit: float | None = None) -> Analysis:
    """The worst-case table of ``placement`` for each q in ``qs`` (``time_limit`` seconds per q)."""
    spec = spectrum(placement)
    rows = tuple(analysis_row(placement, q, spec.mu1, time_limit) for q in qs)
    return Analysis(scheme=placement.scheme.value, K=placement.K, f=placement.f, l=placement.l, r=placement.r,
                    mu1=spec.mu1, sigma2=spec.sigma2, ramanujan=spec.ramanujan, rows=rows)


def default_byzantine_range(placement: Placement) -> list[int]:
    """q = 1 .. (K-1)//2: up to a minority of the workers."""
    return list(range(1, (placement.K - 1) // 2 + 1))
