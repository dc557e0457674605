"""Seeds as an axis: per point the mean top-1 over seeds and its 95% interval, each attacked point's drop from its
control, and which differences between schemes are larger than the seed noise.

A *point* is (scheme, aggregator, attack, q); its runs differ only in the seed. Its *control* is the same scheme and
aggregator with q = 0 (:mod:`shield_ps.sweep.grid` adds it). A seed fixes the initial model and the order of the
batches, so the control and the attacked run of one seed share both and their difference is the attack's cost alone;
drops are therefore *paired* by seed, and so are the comparisons between schemes (one seed gives every scheme the
same initial model and the same batches).

Intervals are Student t intervals, mean +- t(0.975, n-1) * sd / sqrt(n) (sd with n-1); with n = 3 seeds t = 4.30, so
only large effects are resolved. A difference between two schemes' drops is tested with the paired t-test over seeds
(``scipy.stats.ttest_rel``: H0 equal mean drop), Welch's t-test (``ttest_ind(equal_var=False)``) alongside; the verdict
uses the paired test with Holm's step-down correction over all comparisons of the table (family-wise 5%).
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from shield_ps.sweep.results import COMPLETED, RunRow

ALPHA = 0.05
Point = tuple[str, str, str, int]  # (scheme, aggregator, attack, q)


def point_of(row: RunRow) -> Point:
    return row.scheme, row.aggregator, row.attack, row.q


def control_of(point: Point) -> Point:
    return point[0], point[1], "none", 0


def mean_ci95(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The mean and the half-width of its 95% t interval (None with fewer than two values)."""
    from scipy import stats

    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    return mean, float(stats.t.ppf(1 - ALPHA / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))


def paired_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test of mean(a) = mean(b) (None below two pairs). Equal differences with no
    spread: 0 if they are not all zero, else 1 (scipy returns NaN there)."""
    from scipy import stats

    if len(a) != len(b) or len(a) < 2:
        return None
    diffs = [x - y for x, y in zip(a, b, strict=False)]
    if max(diffs) == min(diffs):
        return 0.0 if diffs[0] != 0 else 1.0
    return float(stats.ttest_rel(a, b).pvalue)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of Welch's t-test (unequal variances) of mean(a) = mean(b); None below two values each."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 0.0 if statistics.fmean(a) != statistics.fmean(b) else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: Sequence[float | None], alpha: float = ALPHA) -> list[bool | None]:
    """Holm's step-down rejections (family-wise ``alpha``) for ``pvalues``; None where the p-value is None."""
    ranked = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[bool | None] = [None if p is None else False for p in pvalues]
    for rank, (p, index) in enumerate(ranked):
        if p > alpha / (len(ranked) - rank):
            break
        out[index] = True
    return out


def completed_top1(rows: Iterable[RunRow]) -> dict[Point, dict[int, float]]:
    """point -> seed -> final top-1, for completed runs only."""
    out: dict[Point, dict[int, float]] = {}
    for row in rows:
        if row.status == COMPLETED and row.final_top1 is not None:
            out.setdefault(point_of(row), {})[row.seed] = row.final_top1
    return out


def paired_drops(top1: dict[Point, dict[int, float]], point: Point) -> dict[int, float]:
    """seed -> control top-1 minus the point's top-1, over the seeds both completed (empty for a control)."""
    if point[3] == 0:
        return {}
    control = top1.get(control_of(point), {})
    return {seed: control[seed] - value for seed, value in sorted(top1.get(point, {}).items()) if seed in control}


def with_seed_columns(rows: Sequence[RunRow]) -> list[RunRow]:
    """``rows`` with ``top1_mean``/``top1_ci95`` (the point's final top-1 over its completed seeds) and
    ``drop_vs_control`` (the point's mean paired drop from its control; empty for controls) filled in."""
    top1 = completed_top1(rows)
    out = []
    for row in rows:
        point = point_of(row)
        mean, ci = mean_ci95(list(top1.get(point, {}).values()))
        drops = list(paired_drops(top1, point).values())
        out.append(replace(row, top1_mean=mean, top1_ci95=ci, drop_vs_control=statistics.fmean(drops) if drops
                           else None))
    return out


@dataclass(frozen=True)
class PointSummary:
    """One point over its seeds: top-1 mean and 95% half-width, the paired drop from the control with its interval
    and the paired t-test's p that the drop is zero."""

    scheme: str
    aggregator: str
    attack: str
    q: int
    seeds: int
    top1_mean: float | None
    top1_ci95: float | None
    drop_seeds: int
    drop_mean: float | None
    drop_ci95: float | None
    drop_p: float | None
    corrupted_frac: float | None


def summarize_points(rows: Sequence[RunRow]) -> list[PointSummary]:
    """One summary per point, in the order the points first appear in ``rows``."""
    top1 = completed_top1(rows)
    corrupted: dict[Point, float] = {}
    order: list[Point] = []
    for row in rows:
        point = point_of(row)
        if point not in order:
            order.append(point)
        if row.corrupted_frac is not None:
            corrupted.setdefault(point, row.corrupted_frac)
    out = []
    for point in order:
        values = list(top1.get(point, {}).values())
        drops = paired_drops(top1, point)
        control = top1.get(control_of(point), {})
        mean, ci = mean_ci95(values)
        drop_mean, drop_ci = mean_ci95(list(drops.values()))
        p = paired_p([control[s] for s in drops], [top1[point][s] for s in drops]) if drops else None
        out.append(PointSummary(*point, len(values), mean, ci, len(drops), drop_mean, drop_ci, p,
                                corrupted.get(point)))
    return out


@dataclass(frozen=True)
class Comparison:
    """Scheme ``a`` against scheme ``b`` at one (aggregator, attack, q): the mean over the seeds both completed of
    drop(a) - drop(b) with its 95% interval, the paired and Welch p, and the Holm verdict over the table."""

    aggregator: str
    attack: str
    q: int
    a: str
    b: str
    seeds: int
    diff_mean: float | None
    diff_ci95: float | None
    paired_p: float | None
    welch_p: float | None
    significant: bool | None = None


def compare_schemes(rows: Sequence[RunRow]) -> list[Comparison]:
    """Every pair of schemes at every attacked (aggregator, attack, q), Holm-corrected over the whole list."""
    top1 = completed_top1(rows)
    schemes = list(dict.fromkeys(row.scheme for row in rows))
    settings = list(dict.fromkeys((row.aggregator, row.attack, row.q) for row in rows if row.q > 0))
    found = []
    for aggregator, attack, q in settings:
        for i, a in enumerate(schemes):
            for b in schemes[i + 1:]:
                da = paired_drops(top1, (a, aggregator, attack, q))
                db = paired_drops(top1, (b, aggregator, attack, q))
                seeds = sorted(set(da) & set(db))
                if not seeds:
                    continue
                xa, xb = [da[s] for s in seeds], [db[s] for s in seeds]
                mean, ci = mean_ci95([x - y for x, y in zip(xa, xb, strict=False)])
                found.append(Comparison(aggregator, attack, q, a, b, len(seeds), mean, ci, paired_p(xa, xb),
                                        welch_p(list(da.values()), list(db.values()))))
    verdicts = holm([c.paired_p for c in found])
    return [replace(c, significant=v) for c, v in zip(found, verdicts, strict=False)]
