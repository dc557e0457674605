"""The sweep's figures: test accuracy against step, one panel per (aggregator, attack, q) and one line per scheme (the
layout of the paper's Figs. 2-11; the mean over seeds with its 95% interval shaded), grouped bars of the final top-1
per scheme with error bars, and the drop from the q = 0 control against q (where the schemes separate).

matplotlib is the optional ``plot`` extra, imported only here through :mod:`shield_ps.plot`'s loader; the object API
is used (no pyplot state), so drawing is headless and thread safe.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shield_ps.errors import PlotError
from shield_ps.plot import _figure_class, curves_from_events
from shield_ps.sweep.results import RunRow
from shield_ps.sweep.stats import PointSummary, mean_ci95
from shield_ps.view.replay import iter_events

Group = tuple[str, str, int]  # (aggregator, attack, q)


def _group(row: RunRow) -> Group:
    return row.aggregator, row.attack, row.q


def _title(group: Group) -> str:
    return f"{group[0]}, {group[1]}, q={group[2]}"


def plot_accuracy(rows: Sequence[RunRow], run_dirs: dict[str, Path], output: Path, dpi: int = 100) -> Path:
    """Accuracy vs step, one panel per (aggregator, attack, q), one line per scheme: the mean over the seeds that
    evaluated at that step, with the 95% t interval shaded where there are two seeds or more."""
    groups = sorted({_group(r) for r in rows if r.final_top1 is not None}, key=lambda g: (g[0], g[2], g[1]))
    if not groups:
        raise PlotError("no run of the sweep has an evaluation yet: nothing to plot")
    schemes = sorted({r.scheme for r in rows})
    cols = min(3, len(groups))
    nrows = math.ceil(len(groups) / cols)
    figure = _figure_class()(figsize=(5.0 * cols, 3.8 * nrows), dpi=dpi, layout="constrained")
    axes = figure.subplots(nrows, cols, squeeze=False)
    for index, group in enumerate(groups):
        ax = axes[index // cols][index % cols]
        for scheme in schemes:
            runs = [r for r in rows if _group(r) == group and r.scheme == scheme and r.final_top1 is not None]
            _plot_scheme(ax, scheme, runs, run_dirs, f"C{schemes.index(scheme)}")
        ax.set(title=_title(group), xlabel="step", ylabel="test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    for index in range(len(groups), nrows * cols):
        axes[index // cols][index % cols].set_visible(False)
    return _save(figure, output, dpi)


def _plot_scheme(ax: Any, scheme: str, runs: list[RunRow], run_dirs: dict[str, Path], color: str) -> None:
    """One scheme's line on ``ax``: the mean top-1 over ``runs`` at each step, its 95% t interval shaded."""
    by_step: dict[int, list[float]] = {}
    for row in runs:
        for step, top1 in curves_from_events(iter_events(run_dirs[row.run]), row.scheme).top1.items():
            by_step.setdefault(step, []).append(100 * top1)
    if not by_step:
        return
    steps = sorted(by_step)
    stats = [mean_ci95(by_step[s]) for s in steps]
    means = [m if m is not None else math.nan for m, _ in stats]
    ax.plot(steps, means, marker="o", markersize=3, color=color, label=f"{scheme} ({len(runs)} seeds)"
            if len(runs) > 1 else scheme)
    if any(ci is not None for _, ci in stats):
        half = [ci or 0.0 for _, ci in stats]
        ax.fill_between(steps, [m - h for m, h in zip(means, half, strict=False)],
                        [m + h for m, h in zip(means, half, strict=False)],
                        color=color, alpha=0.2, linewidth=0)


def plot_final_bars(rows: Sequence[RunRow], output: Path, dpi: int = 100) -> Path:
    """Grouped bars: for each (aggregator, attack, q) one bar per scheme, the final top-1 (mean over seeds) with its
    95% interval as an error bar."""
    done = [r for r in rows if r.final_top1 is not None]
    if not done:
        raise PlotError("no run of the sweep has an evaluation yet: nothing to plot")
    groups = sorted({_group(r) for r in done})
    schemes = sorted({r.scheme for r in rows})
    width = 0.8 / len(schemes)
    figure = _figure_class()(figsize=(max(6.0, 1.8 * len(groups) + 2), 4.2), dpi=dpi, layout="constrained")
    ax = figure.subplots()
    for k, scheme in enumerate(schemes):
        heights: list[float] = []
        errors: list[float] = []
        for group in groups:
            values = [100 * r.final_top1 for r in done if r.scheme == scheme and _group(r) == group
                      and r.final_top1 is not None]
            mean, ci = mean_ci95(values)
            heights.append(math.nan if mean is None else mean)
            errors.append(ci or 0.0)
        positions = [g + (k - (len(schemes) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(positions, heights, width=width, color=f"C{k}", label=scheme, yerr=errors, capsize=2)
        ax.bar_label(bars, labels=["" if math.isnan(h) else f"{h:.1f}" for h in heights], fontsize="x-small")
    ax.set_xticks(range(len(groups)), [_title(g) for g in groups], fontsize="small", rotation=30, ha="right")
    ax.set(title="final test top-1 by scheme (mean over seeds, 95% interval)", ylabel="top-1 (%)")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    return _save(figure, output, dpi)


def plot_drops(summaries: Sequence[PointSummary], output: Path, dpi: int = 100) -> Path:
    """The drop from the q = 0 control against q, one panel per (aggregator, attack), one line per scheme, with the
    95% interval of the paired drop as error bars: where the schemes separate."""
    attacked = [s for s in summaries if s.q > 0 and s.drop_mean is not None]
    if not attacked:
        raise PlotError("no attacked point has a completed control yet: no drops to plot")
    panels = list(dict.fromkeys((s.aggregator, s.attack) for s in attacked))
    schemes = list(dict.fromkeys(s.scheme for s in summaries))
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    figure = _figure_class()(figsize=(4.2 * cols, 3.6 * nrows), dpi=dpi, layout="constrained")
    axes = figure.subplots(nrows, cols, squeeze=False)
    for index, (aggregator, attack) in enumerate(panels):
        ax = axes[index // cols][index % cols]
        for k, scheme in enumerate(schemes):
            line = sorted((s for s in attacked if (s.aggregator, s.attack, s.scheme) == (aggregator, attack, scheme)),
                          key=lambda s: s.q)
            if not line:
                continue
            offset = (k - (len(schemes) - 1) / 2) * 0.08  # side by side, so the error bars do not hide each other
            ax.errorbar([s.q + offset for s in line], [100 * (s.drop_mean or 0.0) for s in line],
                        yerr=[100 * (s.drop_ci95 or 0.0) for s in line], marker="o", markersize=4, capsize=3,
                        color=f"C{k}", label=scheme)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(title=f"{aggregator}, {attack}", xlabel="q (Byzantine workers)",
               ylabel="top-1 drop vs q=0 control (points)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left")
    for index in range(len(panels), nrows * cols):
        axes[index // cols][index % cols].set_visible(False)
    return _save(figure, output, dpi)


def _save(figure: Any, output: Path, dpi: int) -> Path:
    try:
        figure.savefig(output, dpi=dpi)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot write {output}: {exc}") from None
    return output
