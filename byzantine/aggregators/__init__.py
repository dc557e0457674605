"""Robust aggregators (stage 2 of ByzShield): one registry of pure functions of an (n, d) float32 array.

``aggregate(name, X, **params)`` is the one entry point; ``name`` is the CLI spelling (an :class:`Aggregator`
value). Parameters: ``s`` (the Byzantine count, for krum, multi-krum, bulyan, trimmed-mean and their variants; see
:func:`default_byzantine_count`), ``m`` (multi-krum), ``buckets`` and ``seed`` (coord-median, sign-sgd),
``threads`` (all of them; it never changes the result: :func:`._blocks.for_each_block`), ``tau``, ``iters``,
``center`` (centered-clipping), ``max_iter``, ``tol`` (geometric-median). Every aggregator reads X in column blocks
and keeps at most one (n, d)-sized temporary.
"""
from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from byzantine.aggregators import bulyan, geometric, krum, order, sign
from byzantine.aggregators._blocks import check_finite, check_matrix
from byzantine.errors import AggregationError

if TYPE_CHECKING:
    from byzantine.placement import Placement

log = logging.getLogger(__name__)


class Aggregator(str, enum.Enum):
    """The aggregators; values are the names the CLI and :func:`aggregate` accept."""

    MEAN = "mean"
    COORD_MEDIAN = "coord-median"
    TRIMMED_MEAN = "trimmed-mean"
    KRUM = "krum"
    MULTI_KRUM = "multi-krum"
    MULTI_KRUM_BYZSHIELD = "multi-krum-byzshield"
    BULYAN = "bulyan"
    BULYAN_BYZSHIELD = "bulyan-byzshield"
    GEOMETRIC_MEDIAN = "geometric-median"
    SIGN_SGD = "sign-sgd"
    CENTERED_CLIPPING = "centered-clipping"


AggregatorFn = Callable[..., np.ndarray]

#: The registry: every aggregator, one function each.
REGISTRY: dict[Aggregator, AggregatorFn] = {
    Aggregator.MEAN: order.mean,
    Aggregator.COORD_MEDIAN: order.coord_median,
    Aggregator.TRIMMED_MEAN: order.trimmed_mean,
    Aggregator.KRUM: krum.krum,
    Aggregator.MULTI_KRUM: krum.multi_krum,
    Aggregator.MULTI_KRUM_BYZSHIELD: krum.multi_krum_byzshield,
    Aggregator.BULYAN: bulyan.bulyan,
    Aggregator.BULYAN_BYZSHIELD: bulyan.bulyan_byzshield,
    Aggregator.GEOMETRIC_MEDIAN: geometric.geometric_median,
    Aggregator.SIGN_SGD: sign.sign_sgd,
    Aggregator.CENTERED_CLIPPING: geometric.centered_clipping,
}

#: The names, in registry order (what ``--aggregator`` accepts).
AGGREGATORS: tuple[str, ...] = tuple(a.value for a in Aggregator)


def parse_aggregator(name: Aggregator | str) -> Aggregator:
    """The :class:`Aggregator` named ``name`` (its CLI spelling), or AggregationError listing the known names."""
    try:
        return Aggregator(name)
    except ValueError:
        raise AggregationError(f"unknown aggregator {name!r}; known: {', '.join(AGGREGATORS)}") from None


def aggregator_params(name: Aggregator | str) -> frozenset[str]:
    """The keyword parameters aggregator ``name`` accepts (e.g. to know whether it takes ``s``)."""
    params = inspect.signature(REGISTRY[parse_aggregator(name)]).parameters
    return frozenset(p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY)


def uses_byzantine_count(name: Aggregator | str) -> bool:
    """Whether aggregator ``name`` needs the Byzantine count ``s``."""
    return "s" in aggregator_params(name)


def aggregate(name: Aggregator | str, X: np.ndarray, *, check_finite_input: bool = True, **params: Any) -> np.ndarray:
    """Aggregate the rows of the (n, d) float32 array X with aggregator ``name``; returns a (d,) float32 vector.

    Raises AggregationError for an unknown name, an unknown or missing parameter, a bad shape or dtype, parameters
    out of range (with the numbers), and, unless ``check_finite_input`` is False (the caller already checked), a
    non-finite entry.
    """
    kind = parse_aggregator(name)
    fn = REGISTRY[kind]
    check_matrix(kind.value, X)
    accepted = aggregator_params(kind)
    unknown = sorted(set(params) - accepted)
    if unknown:
        known = ", ".join(sorted(accepted)) or "none"
        raise AggregationError(f"{kind.value}: unknown parameter(s) {', '.join(unknown)}; accepted: {known}")
    spec = inspect.signature(fn).parameters
    missing = sorted(p for p in accepted if spec[p].default is inspect.Parameter.empty and p not in params)
    if missing:
        raise AggregationError(f"{kind.value}: missing parameter(s) {', '.join(missing)} (n={X.shape[0]} rows)")
    if check_finite_input:
        check_finite(kind.value, X)
    return fn(X, **params)


def default_byzantine_count(placement: Placement, q: int, *, time_limit: float | None = None) -> int:
    """The default s of the robust aggregators for q Byzantine workers: the number of files the adversary can
    corrupt after the vote. ByzShield schemes (MOLS, Ramanujan): c_max(q) from the worst-case analysis (Konstantinidis
    and Ramamoorthy, MLSys 2021, Sec. 5; its proven upper bound if ``time_limit`` cuts the search short). DETOX and
    plain majority vote over groups: floor(q / r'). Baseline: q."""
    from byzantine.analysis import worst_case
    from byzantine.placement import Scheme

    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 0 <= q <= placement.K:
        raise AggregationError(f"q must be an integer in [0, K={placement.K}], got {q!r}")
    q = int(q)
    if placement.scheme is Scheme.BASELINE:
        return q
    if placement.scheme in (Scheme.DETOX, Scheme.MAJ_VOTE):
        return min(q // placement.r_prime, placement.f)
    found = worst_case(placement, q, time_limit=time_limit)
    if not found.exact:
        log.warning("c_max(q=%d) not proven within %s s: using its upper bound %d (best set found: %d files)",
                    q, time_limit, found.upper_bound, found.c_max)
    return int(found.upper_bound)


__all__ = [
    "AGGREGATORS", "Aggregator", "REGISTRY", "aggregate", "aggregator_params", "default_byzantine_count",
    "parse_aggregator", "uses_byzantine_count",
]
