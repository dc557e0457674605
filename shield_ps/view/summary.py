"""The end-of-run summary: steps, wall time, best and final accuracy, files corrupted, workers flagged."""
from __future__ import annotations

from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table

from shield_ps.view import fmt
from shield_ps.view.state import Summary, ViewState, final_summary, median_step_seconds


def _flagged(summary: Summary, state: ViewState) -> str:
    """Flagged workers with how often each disagreed with the majority, when the view saw it."""
    if not summary.flagged_workers:
        return "none"
    counts = {i: w.disagreements for i, w in enumerate(state.workers) if w.disagreements}
    return ", ".join(f"{i} (x{counts[i]})" if i in counts else str(i) for i in summary.flagged_workers)


def summary_rows(state: ViewState) -> list[tuple[str, str]]:
    """(label, value) rows of the final summary; pure, shared by the plain and the live rendering."""
    summary = final_summary(state)
    median = median_step_seconds(state)
    per_step = f" (median {median:.3f} s/step)" if median is not None else ""
    return [
        ("run", summary.reason),
        ("steps", f"{summary.steps} in {fmt.duration(summary.wall_s)}{per_step}"),
        ("accuracy", f"best {fmt.pct(summary.best_top1)} · final {fmt.pct(summary.final_top1)}"),
        ("files", f"{summary.files_corrupted} corrupted · {summary.files_dropped} dropped"),
        ("flagged", _flagged(summary, state)),
    ]


def summary_lines(state: ViewState) -> list[str]:
    """The summary as plain text lines (``summary: run completed`` ...)."""
    return [f"summary: {label:<8} {value}" for label, value in summary_rows(state)]


def render_summary(state: ViewState) -> RenderableType:
    """The summary as a small rich panel."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in summary_rows(state):
        table.add_row(label, value)
    reason = final_summary(state).reason
    style = "green" if reason == "completed" else "yellow"
    return Panel(table, title="[bold]run summary[/]", title_align="left", border_style=style, expand=False)
