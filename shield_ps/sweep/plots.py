"""The sweep's two figures: test accuracy against step, one panel per (aggregator, attack, q) and one line per scheme
(the layout of the paper's Figs. 2-11), and grouped bars of the final top-1 per scheme.

matplotlib is the optional ``plot`` extra, imported only here through :mod:`shield_ps.plot`'s loader; the object API
is used (no pyplot state), so drawing is headless and thread safe.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from shield_ps.errors import PlotError
from shield_ps.plot import _figure_class, curves_from_events
from shield_ps.sweep.results import RunRow
from shield_ps.view.replay import iter_events

Group = tuple[str, str, int]  # (aggregator, attack, q)


def _group(row: RunRow) -> Group:
    return row.aggregator, row.attack, row.q


def _title(group: Group) -> str:
    return f"{group[0]}, {group[1]}, q={group[2]}"


def plot_accuracy(rows: Sequence[RunRow], run_dirs: dict[str, Path], output: Path, dpi: int = 100) -> Path:
    """Accuracy vs step of every run that has evaluations, one panel per (aggregator, attack, q)."""
    groups = sorted({_group(r) for r in rows if r.final_top1 is not None})
    if not groups:
        raise PlotError("no run of the sweep has an evaluation yet: nothing to plot")
    seeds = {r.seed for r in rows}
    schemes = sorted({r.scheme for r in rows})
    cols = min(3, len(groups))
    nrows = math.ceil(len(groups) / cols)
    figure = _figure_class()(figsize=(5.0 * cols, 3.8 * nrows), dpi=dpi, layout="constrained")
    axes = figure.subplots(nrows, cols, squeeze=False)
    for index, group in enumerate(groups):
        ax = axes[index // cols][index % cols]
        for row in (r for r in rows if _group(r) == group and r.final_top1 is not None):
            curves = curves_from_events(iter_events(run_dirs[row.run]), row.scheme)
            steps = sorted(curves.top1)
            label = row.scheme if len(seeds) == 1 else f"{row.scheme} (seed {row.seed})"
            ax.plot(steps, [100 * curves.top1[s] for s in steps], marker="o", markersize=3,
                    color=f"C{schemes.index(row.scheme)}", label=label)
        ax.set(title=_title(group), xlabel="step", ylabel="test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    for index in range(len(groups), nrows * cols):
        axes[index // cols][index % cols].set_visible(False)
    return _save(figure, output, dpi)


def plot_final_bars(rows: Sequence[RunRow], output: Path, dpi: int = 100) -> Path:
    """Grouped bars: for each (aggregator, attack, q) one bar per scheme, the final top-1 (mean over seeds)."""
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
        for group in groups:
            values = [r.final_top1 for r in done if r.scheme == scheme and _group(r) == group]
            heights.append(100 * sum(values) / len(values) if values else math.nan)
        positions = [g + (k - (len(schemes) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(positions, heights, width=width, color=f"C{k}", label=scheme)
        ax.bar_label(bars, labels=["" if math.isnan(h) else f"{h:.1f}" for h in heights], fontsize="x-small")
    ax.set_xticks(range(len(groups)), [_title(g) for g in groups], fontsize="small")
    ax.set(title="final test top-1 by scheme", ylabel="top-1 (%)")
    ax.legend(fontsize="small", loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    return _save(figure, output, dpi)


def _save(figure: Any, output: Path, dpi: int) -> Path:
    try:
        figure.savefig(output, dpi=dpi)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot write {output}: {exc}") from None
    return output
