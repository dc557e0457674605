"""The rich live view: one panel rendered from a :class:`ViewState`, sized to the terminal.

``LivePanel(state)`` is a rich renderable; it picks its layout when rendered, from the width and height rich gives it:
on 80x24 the workers are a compact grid and the step phases are bars below; from 120 columns the worker grid and the
phase bars sit side by side. Nothing here touches the terminal: the sink (``shield_ps.view.sink``) owns ``rich.Live``.
"""
from __future__ import annotations

import math

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from shield_ps.view import fmt
from shield_ps.view.plain import job_title
from shield_ps.view.state import (PHASES, ViewState, WorkerState, WorkerView, eta_seconds, phase_means,
                                  progress)

STATE_STYLE: dict[WorkerState, tuple[str, str]] = {  # state -> (4-letter label, style)
    WorkerState.UNKNOWN: ("----", "dim"),
    WorkerState.CONNECTED: ("conn", "bright_blue"),
    WorkerState.COMPUTING: ("comp", "yellow"),
    WorkerState.DONE: ("done", "green"),
    WorkerState.LATE: ("late", "bright_magenta"),
    WorkerState.ERASED: ("eras", "bold red"),
    WorkerState.LEFT: ("left", "dim"),
}
PHASE_STYLE: dict[str, str] = {"broadcast": "bright_cyan", "compute": "bright_green", "gather": "bright_blue",
                               "vote": "bright_magenta", "aggregate": "bright_yellow", "update": "bright_red"}
WORKER_CELL = 19  #: columns one worker takes in the grid, padding included
WIDE = 120  #: from this width, workers and phases sit side by side


def _progress_row(state: ViewState, width: int) -> RenderableType:
    done, total = progress(state)
    epochs = ""
    if state.job and state.job.steps_per_epoch and state.epoch is not None:
        epochs = f"ep {state.epoch + 1}/{math.ceil(total / state.job.steps_per_epoch) if total else '?'}"
    elapsed = (state.now - state.started) if state.now is not None and state.started is not None else None
    grid = Table.grid(padding=(0, 1), expand=True)
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    grid.add_column(no_wrap=True, justify="right")
    label = Text.assemble(("step ", "bold"), f"{done}/{total or '?'}")
    tail = f"{100 * done / total:3.0f}% {epochs} {fmt.duration(elapsed)} eta {fmt.duration(eta_seconds(state))}"
    grid.add_row(label, ProgressBar(total=float(total or 1), completed=float(done if total else 0)), tail)
    return grid


def _metrics_row(state: ViewState) -> Text:
    text = Text.assemble(("lr ", "bold"), fmt.lr(state.lr), ("  loss ", "bold"), fmt.num(state.loss))
    result = state.last_eval
    if result is None:
        text.append("  eval -", style="dim")
    else:
        text.append(f"  eval@{result.step} ", style="bold")
        text.append(f"top1 {fmt.pct(result.top1)}", style="bold green")
        text.append(f" top5 {fmt.pct(result.top5)}  best {fmt.pct(state.best_top1)}")
    return text


def _vote_row(state: ViewState) -> Text:
    vote = state.vote
    if vote is None:
        return Text("vote  -", style="dim")
    text = Text.assemble(("vote ", "bold"), f"won {vote.won}/{vote.files} ")
    text.append(f"dropped {vote.dropped} ", style="yellow" if vote.dropped else "")
    text.append(f"corrupted {vote.corrupted}", style="bold red" if vote.corrupted else "")
    text.append(f"  total corrupted {state.files_corrupted} dropped {state.files_dropped}", style="dim")
    return text


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}s" if value < 9.995 else f"{value:.1f}s" if value < 99.95 else f"{value:.0f}s"


def _worker_cell(index: int, worker: WorkerView) -> Text:
    label, style = STATE_STYLE[worker.state]
    text = Text()
    text.append(f"{index:>2}", style="bold white on red" if worker.flagged_now else "bold")
    text.append(" ")
    text.append(label, style=style)
    text.append(f" {_seconds(worker.compute_s):>5}", style="dim")
    if worker.disagreements:
        text.append(f" x{worker.disagreements}", style="bright_red")
    return text


def _workers(state: ViewState, width: int) -> RenderableType:
    workers = state.workers
    counts: dict[WorkerState, int] = {}
    for worker in workers:
        counts[worker.state] = counts.get(worker.state, 0) + 1
    head = Text("workers ", style="bold")
    head.append(" ".join(f"{n} {s.value}" for s, n in counts.items() if s is not WorkerState.UNKNOWN) or "-")
    flagged = sum(w.flagged_now for w in workers)
    if flagged:
        head.append(f"  {flagged} flagged", style="bold red")
    per_row = max(1, width // WORKER_CELL)
    grid = Table.grid(padding=(0, 1))
    for _ in range(min(per_row, max(len(workers), 1))):
        grid.add_column(width=WORKER_CELL - 1, no_wrap=True)
    cells = [_worker_cell(i, w) for i, w in enumerate(workers)]
    for row in range(0, len(cells), per_row):
        grid.add_row(*cells[row:row + per_row])
    return Group(head, grid)


def _phase_bars(state: ViewState, width: int) -> RenderableType:
    last, means = state.phases_last, phase_means(state)
    total = last.get("total") or sum(last.get(p, 0.0) for p in PHASES) or 1.0
    head = Text.assemble(("step phases ", "bold"), (f"last {fmt.ms(last.get('total'))}  "
                                                    f"mean {fmt.ms(means.get('total'))}", "dim"))
    bar_width = max(width - 32, 4)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=9, no_wrap=True)
    grid.add_column(width=bar_width, no_wrap=True)
    grid.add_column(width=8, justify="right", no_wrap=True)
    grid.add_column(width=4, justify="right", no_wrap=True)
    for phase in PHASES:
        seconds = last.get(phase)
        share = 0.0 if seconds is None else min(seconds / total, 1.0)
        filled = round(share * bar_width)
        bar = Text("━" * filled, style=PHASE_STYLE[phase]) + Text("━" * (bar_width - filled), style="grey23")
        grid.add_row(Text(phase, style=PHASE_STYLE[phase]), bar, fmt.ms(seconds), f"{100 * share:.0f}%")
    return Group(head, grid)


def _phase_stack(state: ViewState, width: int) -> RenderableType:
    """One stacked bar with a one-line legend: the phases when the terminal is too short for a bar each."""
    last = state.phases_last
    total = sum(last.get(p, 0.0) for p in PHASES) or 1.0
    bar_width = max(width - 20, 4)
    bar = Text.assemble(("phases ", "bold"), (f"{fmt.ms(last.get('total')):>9} ", "dim"))
    legend = Text()
    for phase in PHASES:
        share = last.get(phase, 0.0) / total
        bar.append("━" * round(share * bar_width), style=PHASE_STYLE[phase])
        legend.append(f"{phase} {100 * share:.0f}%  ", style=PHASE_STYLE[phase])
    return Group(bar, legend)


def render(state: ViewState, width: int = 80, height: int | None = None) -> RenderableType:
    """The whole live panel for a terminal of ``width`` x ``height`` characters."""
    inner = width - 4
    top = [Text(job_title(state, steps=False), style="bold", no_wrap=True, overflow="ellipsis"), _progress_row(state, inner),
           _metrics_row(state), _vote_row(state)]
    wide = width >= WIDE
    worker_width = inner // 2 if wide else inner
    worker_rows = math.ceil(len(state.workers) / max(1, worker_width // WORKER_CELL))
    body: list[RenderableType]
    if wide:
        side = Table.grid(padding=(0, 2), expand=True)
        side.add_column(ratio=1)
        side.add_column(ratio=1)
        side.add_row(_workers(state, worker_width), _phase_bars(state, inner - worker_width - 2))
        body = [side]
    else:
        tall_enough = height is None or 2 + len(top) + 1 + worker_rows + 7 <= height
        phases = _phase_bars(state, inner) if tall_enough else _phase_stack(state, inner)
        body = [_workers(state, inner), phases]
    status = "finished: " + state.summary.reason if state.summary else "running"
    return Panel(Group(*top, *body), title="[bold]shield[/]", title_align="left", subtitle=status,
                 subtitle_align="right", border_style="blue", width=width)


class LivePanel:
    """A rich renderable drawing ``state`` at whatever size the console offers."""

    def __init__(self, state: ViewState) -> None:
        self.state = state

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield render(self.state, options.max_width, options.height or console.height)
