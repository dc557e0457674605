"""The end-of-run summary: steps, wall time, accuracy, files, skipped updates, workers by category (lying, outvoted,
slow, erased: never mixed), refused connections, the codecs each direction used (when the steps reported them),
checkpoints and whether the metrics file is complete."""
from __future__ import annotations

from typing import NamedTuple

from rich.console import RenderableType
from rich.panel import Panel
from rich.table import Table

from shield_ps.view import fmt
from shield_ps.view.codecs import shares_text
from shield_ps.view.fields import WorkerCounts
from shield_ps.view.figures import final_summary, median_step_seconds
from shield_ps.view.state import Summary, ViewState

#: how many workers a category row names before it says how many more
WORKERS_SHOWN = 12


class SummaryRow(NamedTuple):
    label: str
    value: str
    loud: bool = False  #: something was lost or went wrong: shown in bold red


def _workers(counts: WorkerCounts) -> str:
    """``3 (x22), 7 (x24)`` (ids only where the count is unknown), or ``none``."""
    if not counts:
        return "none"
    shown = ", ".join(f"{i} (x{n})" if n is not None else str(i) for i, n in counts[:WORKERS_SHOWN])
    return shown if len(counts) <= WORKERS_SHOWN else f"{shown}, +{len(counts) - WORKERS_SHOWN} more"


def _known(value: int | None) -> str:
    return "?" if value is None else str(value)


def _checkpoints(summary: Summary) -> SummaryRow:
    last = "none written" if summary.last_checkpoint is None else f"last at step {summary.last_checkpoint}"
    if not summary.checkpoint_failures:
        return SummaryRow("checkpoints", f"ok, {last}")
    first = summary.checkpoint_errors[0] if summary.checkpoint_errors else None
    detail = f": step {first.step}: {first.error}" if first is not None else ""
    return SummaryRow("checkpoints", f"FAILED x{summary.checkpoint_failures}{detail}; {last}", loud=True)


def _metrics(summary: Summary) -> SummaryRow:
    if summary.metrics_complete is None:
        return SummaryRow("metrics", "?")
    if summary.metrics_complete:
        return SummaryRow("metrics", "complete")
    return SummaryRow("metrics", "INCOMPLETE: metrics.jsonl could not be written to the end", loud=True)


def _codecs(state: ViewState) -> list[SummaryRow]:
    """The run's codec shares per direction, over the steps the view saw report them (no row for an older run)."""
    totals = state.codec_totals
    return [] if totals is None else [SummaryRow("codecs", shares_text(totals))]


def _steps(state: ViewState, summary: Summary) -> str:
    """``30 in 0:00:40 (median ...)``; after ``--resume`` the steps of the whole run and this invocation's steps with
    the time they took, each labelled (the wall time is this invocation's only)."""
    median = median_step_seconds(state)
    per_step = f" (median {median:.3f} s/step)" if median is not None else ""
    start = state.job.start_step if state.job is not None and state.job.resumed else 0
    if not start:
        return f"{summary.steps} in {fmt.duration(summary.wall_s)}{per_step}"
    return (f"{summary.steps} in all · this invocation, resumed at step {start}: {max(summary.steps - start, 0)} in "
            f"{fmt.duration(summary.wall_s)}{per_step}")


def summary_rows(state: ViewState) -> list[SummaryRow]:
    """The rows of the final summary; pure, shared by the plain and the live rendering."""
    summary = final_summary(state)
    return [
        SummaryRow("run", summary.reason, loud=summary.reason.startswith("failed")),
        SummaryRow("steps", _steps(state, summary)),
        SummaryRow("accuracy", f"best {fmt.pct(summary.best_top1)} · final {fmt.pct(summary.final_top1)}"),
        SummaryRow("files", f"{summary.files_corrupted} corrupted · {summary.files_dropped} dropped"),
        SummaryRow("updates", f"{_known(summary.steps_skipped)} skipped · {_known(summary.steps_lowered_s)} with s "
                              "lowered"),
        SummaryRow("lying", _workers(summary.lying_workers), loud=bool(summary.lying_workers)),
        SummaryRow("outvoted", _workers(summary.outvoted_workers)),
        SummaryRow("slow", _workers(summary.slow_workers)),
        SummaryRow("erased", _workers(summary.erased_workers)),
    ] + ([SummaryRow("relay", _workers(summary.relay_workers))] if summary.relay_workers else []) + [
        SummaryRow("refused", f"{_known(summary.refused)} connections before authentication"),
    ] + _codecs(state) + [
        _checkpoints(summary),
        _metrics(summary),
    ]


def summary_lines(state: ViewState) -> list[str]:
    """The summary as plain text lines (``summary: run         completed`` ...)."""
    return [f"summary: {row.label:<11} {row.value}" for row in summary_rows(state)]


def render_summary(state: ViewState) -> RenderableType:
    """The summary as a small rich panel (red when a checkpoint or the metrics were lost or the run failed)."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    rows = summary_rows(state)
    for row in rows:
        table.add_row(row.label, row.value, style="bold red" if row.loud else None)
    reason = final_summary(state).reason
    style = "red" if any(r.loud and r.label != "lying" for r in rows) else "green" if reason == "completed" \
        else "yellow"
    return Panel(table, title="[bold]run summary[/]", title_align="left", border_style=style, expand=False)
