"""The end of a sweep: ``results.csv`` and ``results.md`` (one row per run, with its point's seed statistics),
``points.md`` (one row per point: top-1 and drop from the control with 95% intervals, and the tests between
schemes), the rich tables on the terminal and the figures."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from shield_ps.errors import PlotError
from shield_ps.sweep.results import RunRow, markdown_table, pct_interval, points, rich_table, write_csv
from shield_ps.sweep.stats import ALPHA, Comparison, PointSummary, compare_schemes, summarize_points, with_seed_columns

log = logging.getLogger(__name__)

CSV_NAME, MARKDOWN_NAME, POINTS_NAME = "results.csv", "results.md", "points.md"
ACCURACY_PNG, BARS_PNG, DROP_PNG = "accuracy.png", "final_top1.png", "drop.png"


def write_report(rows: Sequence[RunRow], runner: Any, console: Any, *, plots: bool = True) -> None:
    """Write the CSV (always), print the tables, and draw the figures unless ``plots`` is False or no run has an
    evaluation; a missing matplotlib is reported, not fatal (the CSV and tables are the results)."""
    out = runner.out
    rows = with_seed_columns(rows)
    console.print(rich_table(rows, title=f"sweep {out}"))
    console.print(f"wrote {write_csv(rows, out / CSV_NAME)}", soft_wrap=True)
    (out / MARKDOWN_NAME).write_text(markdown_table(rows))
    summaries, comparisons = summarize_points(rows), compare_schemes(rows)
    text = points_markdown(summaries, comparisons)
    (out / POINTS_NAME).write_text(text)
    if len({r.seed for r in rows}) > 1 or any(r.q == 0 for r in rows):
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    if not plots:
        return
    from shield_ps.sweep.plots import plot_accuracy, plot_drops, plot_final_bars

    run_dirs = {spec.name: runner.run_dir(spec) for spec in runner.grid.runs()}
    try:
        console.print(f"wrote {plot_accuracy(rows, run_dirs, out / ACCURACY_PNG)}", soft_wrap=True)
        console.print(f"wrote {plot_final_bars(rows, out / BARS_PNG)}", soft_wrap=True)
        if any(s.drop_mean is not None for s in summaries):
            console.print(f"wrote {plot_drops(summaries, out / DROP_PNG)}", soft_wrap=True)
    except PlotError as exc:
        console.print(f"[yellow]no plots:[/] {exc}")


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def points_table(summaries: Sequence[PointSummary]) -> str:
    """One line per point: final top-1 over seeds and the paired drop from the control, with 95% intervals."""
    head = ("scheme", "aggregator", "attack", "q", "corrupted/step", "seeds", "final top-1 (mean ± 95%)",
            "drop vs q=0 control, points (mean ± 95%)", "p (drop = 0, paired t)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        corrupted = "-" if s.corrupted_frac is None else f"{100 * s.corrupted_frac:.1f}%"
        drop = "control" if s.q == 0 else points(s.drop_mean, s.drop_ci95)
        lines.append("| " + " | ".join((s.scheme, s.aggregator, s.attack, str(s.q), corrupted, str(s.seeds),
                                        pct_interval(s.top1_mean, s.top1_ci95), drop,
                                        "" if s.q == 0 else _p(s.drop_p))) + " |")
    return "\n".join(lines) + "\n"


def drop_matrix(summaries: Sequence[PointSummary]) -> str:
    """Drops from the control in points, one line per (aggregator, attack, q), one column per scheme."""
    schemes = list(dict.fromkeys(s.scheme for s in summaries))
    cells = {(s.aggregator, s.attack, s.q, s.scheme): s for s in summaries if s.q > 0}
    settings = list(dict.fromkeys((s.aggregator, s.attack, s.q) for s in summaries if s.q > 0))
    head = ("aggregator", "attack", "q", *schemes)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for aggregator, attack, q in settings:
        row = [aggregator, attack, str(q)]
        for scheme in schemes:
            s = cells.get((aggregator, attack, q, scheme))
            row.append("-" if s is None else points(s.drop_mean, s.drop_ci95))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def comparisons_table(comparisons: Sequence[Comparison]) -> str:
    """Pairs of schemes: the difference of their drops (a - b; positive: a loses more), the tests and the verdict."""
    head = ("aggregator", "attack", "q", "a vs b", "seeds", "drop(a) - drop(b), points (mean ± 95%)",
            "p paired t", "p Welch", f"verdict (Holm, {len(comparisons)} tests, 5%)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in comparisons:
        if c.significant is None:
            verdict = "too few seeds"
        elif c.significant:
            verdict = f"**significant**: {c.a if (c.diff_mean or 0) < 0 else c.b} loses less"
        else:
            verdict = "not significant (within seed noise)"
        lines.append("| " + " | ".join((c.aggregator, c.attack, str(c.q), f"{c.a} vs {c.b}", str(c.seeds),
                                        points(c.diff_mean, c.diff_ci95), _p(c.paired_p), _p(c.welch_p),
                                        verdict)) + " |")
    return "\n".join(lines) + "\n"


def points_markdown(summaries: Sequence[PointSummary], comparisons: Sequence[Comparison]) -> str:
    alpha = int(100 * (1 - ALPHA))
    return ("## Points (final top-1 over seeds; drop = control minus point, paired by seed)\n\n"
            + points_table(summaries)
            + f"\n## Drop from the q = 0 control, percentage points (mean ± {alpha}% interval)\n\n"
            + drop_matrix(summaries)
            + "\n## Schemes compared (paired t-test over seeds on the drops; Welch's t-test alongside)\n\n"
            + (comparisons_table(comparisons) if comparisons else "(no attacked point with a control yet)\n"))
