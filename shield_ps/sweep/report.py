"""The end of a sweep: ``results.csv`` and ``results.md``, the rich table on the terminal and the two figures."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from shield_ps.errors import PlotError
from shield_ps.sweep.results import RunRow, markdown_table, rich_table, write_csv

log = logging.getLogger(__name__)

CSV_NAME, MARKDOWN_NAME = "results.csv", "results.md"
ACCURACY_PNG, BARS_PNG = "accuracy.png", "final_top1.png"


def write_report(rows: Sequence[RunRow], runner: Any, console: Any, *, plots: bool = True) -> None:
    """Write the CSV (always), print the table, and draw the figures unless ``plots`` is False or no run has an
    evaluation; a missing matplotlib is reported, not fatal (the CSV and table are the results)."""
    out = runner.out
    console.print(rich_table(rows, title=f"sweep {out}"))
    console.print(f"wrote {write_csv(rows, out / CSV_NAME)}", soft_wrap=True)
    (out / MARKDOWN_NAME).write_text(markdown_table(rows))
    if not plots:
        return
    from shield_ps.sweep.plots import plot_accuracy, plot_final_bars

    run_dirs = {spec.name: runner.run_dir(spec) for spec in runner.grid.runs()}
    try:
        console.print(f"wrote {plot_accuracy(rows, run_dirs, out / ACCURACY_PNG)}", soft_wrap=True)
        console.print(f"wrote {plot_final_bars(rows, out / BARS_PNG)}", soft_wrap=True)
    except PlotError as exc:
        console.print(f"[yellow]no plots:[/] {exc}")
