"""The rich live view: one panel rendered from a :class:`ViewState`, sized to the terminal.

``LivePanel(state)`` is a rich renderable; it picks its layout when rendered, from the width and height rich gives it:
on 80x24 the workers are a compact grid and the step phases are bars below; from about 130 columns the worker grid
and the phase bars sit side by side; on a short terminal the phases shrink to one stacked bar. The panel is built from
fixed-width ``Text`` lines (no tables), so a redraw costs about a millisecond. Nothing here touches the terminal: the
sink (``shield_ps.view.sink``) owns ``rich.Live``.
"""
from __future__ import annotations

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.panel import Panel
from rich.text import Text

from shield_ps.phases.names import TOTAL, Phase
from shield_ps.view import fmt
from shield_ps.view.codecs import DIRECTIONS
from shield_ps.view.figures import epochs, eta_seconds, progress, waiting_line
from shield_ps.view.plain import job_title
from shield_ps.view.state import PHASES, UpdateAction, ViewState, WorkerState, WorkerView

STATE_STYLE: dict[WorkerState, tuple[str, str]] = {  # state -> (4-letter label, style)
    WorkerState.UNKNOWN: ("----", "dim"),
    WorkerState.CONNECTED: ("conn", "bright_blue"),
    WorkerState.COMPUTING: ("comp", "yellow"),
    WorkerState.DONE: ("done", "green"),
    WorkerState.LATE: ("late", "bright_magenta"),
    WorkerState.ERASED: ("eras", "bold red"),
    WorkerState.LEFT: ("left", "dim"),
}
PHASE_STYLE: dict[str, str] = {Phase.BROADCAST.value: "bright_cyan", Phase.DIGEST_GATHER.value: "bright_green",
                               Phase.PAYLOAD_FETCH.value: "bright_blue", Phase.VOTE.value: "bright_magenta",
                               Phase.AGGREGATE.value: "bright_yellow", Phase.UPDATE.value: "bright_red"}
WORKER_CELL = 19  #: columns one worker takes in the grid, the gap included
PHASE_COLUMN_MIN, PHASE_COLUMN = 46, 60  #: columns the phase bars take beside the workers; the workers get the rest
SIDE_BY_SIDE_CELLS = 4  #: workers and phases sit side by side once this many worker cells fit in a row (~130 cols)
BAR = "━"
#: how a worker's id is marked for what it did in the last step; only a proven liar is on red
LYING_STYLE, OUTVOTED_STYLE, SLOW_STYLE = "bold white on red", "bold black on yellow", "bold black on magenta"


def _fit(text: Text, width: int) -> Text:
    """``text`` cut or padded to exactly ``width`` cells."""
    text = text.copy()
    text.truncate(width, overflow="ellipsis", pad=True)
    return text


def _bar(fraction: float, width: int, style: str) -> Text:
    filled = round(max(0.0, min(fraction, 1.0)) * width)
    return Text.assemble((BAR * filled, style), (BAR * (width - filled), "grey23"))


def _progress_row(state: ViewState, width: int) -> Text:
    done, total = progress(state)
    epoch = epochs(state)
    epoch_text = f" ep {epoch[0]}/{epoch[1]}" if epoch else ""
    elapsed = (state.now - state.started) if state.now is not None and state.started is not None else None
    label = Text.assemble(("step ", "bold"), f"{done}/{total or '?'} ")
    percent = f"{100 * done / total:3.0f}%" if total else "  ?%"
    tail = Text(f" {percent}{epoch_text} {fmt.duration(elapsed)} eta {fmt.duration(eta_seconds(state))}")
    bar_width = max(width - len(label) - len(tail), 4)
    return label + _bar(done / total if total else 0.0, bar_width, "bright_magenta") + tail


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
    waiting = waiting_line(state)
    if waiting is not None:
        return Text(waiting, style="yellow")
    if vote is None:
        return Text("vote -", style="dim")
    text = Text.assemble(("vote ", "bold"), f"won {vote.won}/{vote.files} ")
    text.append(f"dropped {vote.dropped} ", style="yellow" if vote.dropped else "")
    text.append(f"corrupted {vote.corrupted}", style="bold red" if vote.corrupted else "")
    text.append(f"  total corrupted {state.files_corrupted} dropped {state.files_dropped}", style="dim")
    return text


def _codec_row(state: ViewState) -> Text | None:
    """The latest step's codecs: ``codec out none×14 lz4×1 · in none×25`` (None when the step did not report them);
    a compressing codec is coloured so that a switch stands out."""
    use = state.codecs
    if use is None:
        return None
    text = Text("codec", style="bold")
    for i, direction in enumerate(DIRECTIONS):
        text.append(" ·" if i else "")
        text.append(f" {direction}")
        for name, count in use.direction(direction) or (("-", 0),):
            text.append(" ")
            text.append(name if name == "-" else f"{name}×{count}", style="dim" if name in ("none", "-") else "cyan")
    return text


def _alerts_row(state: ViewState) -> Text | None:
    """Skipped updates, refused connections and failed checkpoints, when there are any (None otherwise)."""
    parts: list[tuple[str, str]] = []
    if state.checkpoint_failures:
        failed = state.checkpoint_errors[-1].step if state.checkpoint_errors else "?"
        parts.append((f"CHECKPOINT FAILED x{state.checkpoint_failures} (step {failed})", "bold white on red"))
    vote = state.vote
    if vote is not None and vote.action is UpdateAction.SKIP:
        parts.append(("update skipped", "bold yellow"))
    elif vote is not None and vote.action is UpdateAction.LOWER_S:
        parts.append((f"s lowered to {vote.s if vote.s is not None else '?'}", "yellow"))
    if state.steps_skipped:
        parts.append((f"{state.steps_skipped} updates skipped", "dim"))
    if state.steps_lowered_s:
        parts.append((f"{state.steps_lowered_s} with s lowered", "dim"))
    if state.refused:
        parts.append((f"refused {state.refused}", "yellow"))
    if not parts:
        return None
    text = Text("alerts ", style="bold")
    for i, (part, style) in enumerate(parts):
        text.append("  " if i else "")
        text.append(part, style=style)
    return text


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}s" if value < 9.995 else f"{value:.1f}s" if value < 99.95 else f"{value:.0f}s"


def _marks(worker: WorkerView) -> Text:
    """Running counts: ``xN`` outvoted, ``!N`` proven lying, ``~N`` slow (empty for a clean worker)."""
    text = Text()
    for count, sign, style in ((worker.disagreements, "x", "yellow"), (worker.lies, "!", "bold red"),
                               (worker.slow_steps, "~", "magenta")):
        if count:
            text.append(f" {sign}{count}", style=style)
    return text


def _id_style(worker: WorkerView) -> str:
    if worker.lying_now:
        return LYING_STYLE
    return OUTVOTED_STYLE if worker.outvoted_now else SLOW_STYLE if worker.slow_now else "bold"


def _worker_cell(index: int, worker: WorkerView) -> Text:
    label, style = STATE_STYLE[worker.state]
    text = Text()
    text.append(f"{index:>2}", style=_id_style(worker))
    text.append(" ")
    text.append(label, style=style)
    marks = _marks(worker)
    if len(text) + 6 + len(marks) < WORKER_CELL:  # the compute time gives way to the marks when both do not fit
        text.append(f" {_seconds(worker.compute_s):>5}", style="dim")
    return _fit(text + marks, WORKER_CELL)


def _interest(item: tuple[int, WorkerView]) -> tuple[bool, bool, bool, int, int, int]:
    index, worker = item
    trouble = worker.state in (WorkerState.LATE, WorkerState.ERASED, WorkerState.LEFT, WorkerState.UNKNOWN)
    marked = worker.outvoted_now or worker.slow_now
    return (not worker.lying_now, not marked, not trouble, -worker.lies, -worker.disagreements, index)


def _workers(state: ViewState, width: int, max_rows: int | None = None) -> list[Text]:
    """A header and a grid of worker cells; past ``max_rows`` rows, only the workers worth a look, by id."""
    workers = state.workers
    counts: dict[WorkerState, int] = {}
    for worker in workers:
        counts[worker.state] = counts.get(worker.state, 0) + 1
    head = Text("workers ", style="bold")
    head.append(" · ".join(f"{n} {s.value}" for s, n in counts.items() if s is not WorkerState.UNKNOWN) or "-")
    for name, n, style in (("lying", sum(w.lying_now for w in workers), "bold red"),
                           ("outvoted", sum(w.outvoted_now for w in workers), "yellow"),
                           ("slow", sum(w.slow_now for w in workers), "magenta")):
        if n:
            head.append(f"  {n} {name}", style=style)
    if len(state.classes) > 1:
        tol = f", tol {state.tolerance:.2g}" if state.tolerance is not None else ""
        head.append(f"  {len(state.classes)} classes{tol}", style="yellow")
    per_row = max(1, width // WORKER_CELL)
    shown = list(enumerate(workers))
    hidden = 0
    if max_rows is not None and len(shown) > per_row * max(max_rows, 1):
        keep = per_row * max(max_rows - 1, 1)
        shown = sorted(sorted(shown, key=_interest)[:keep])
        hidden = len(workers) - keep
    cells = [_worker_cell(i, w) for i, w in shown]
    lines = [head] + [Text("").join(cells[row:row + per_row]) for row in range(0, len(cells), per_row)]
    if hidden:
        lines.append(Text(f"… {hidden} more workers not shown (the quietest)", style="dim"))
    return lines


def _phase_bars(state: ViewState, width: int) -> list[Text]:
    last, steps = state.phases_last, max(state.steps_seen, 1)
    total = last.get(TOTAL) or sum(last.get(p, 0.0) for p in PHASES) or 1.0
    mean_total = state.phases_sum.get(TOTAL)
    head = Text.assemble(("step phases ", "bold"), (f"last {fmt.ms(last.get(TOTAL))}  mean "
                                                    f"{fmt.ms(None if mean_total is None else mean_total / steps)}",
                                                    "dim"))
    bar_width = max(width - 25, 4)
    lines = [head]
    for phase in PHASES:
        seconds = last.get(phase)
        share = 0.0 if seconds is None else seconds / total
        lines.append(Text.assemble((f"{phase:<10}", PHASE_STYLE[phase]), _bar(share, bar_width, PHASE_STYLE[phase]),
                                   f"{fmt.ms(seconds):>10}{100 * share:4.0f}%"))
    return lines


def _phase_stack(state: ViewState, width: int) -> list[Text]:
    """One stacked bar and a one-line legend: the phases when the terminal is too short for a bar each."""
    last = state.phases_last
    total = sum(last.get(p, 0.0) for p in PHASES) or 1.0
    bar = Text.assemble(("phases ", "bold"), (f"{fmt.ms(last.get(TOTAL)):>9} ", "dim"))
    bar_width = max(width - len(bar), 4)
    legend = Text()
    for phase in PHASES:
        share = last.get(phase, 0.0) / total
        bar.append(BAR * round(share * bar_width), style=PHASE_STYLE[phase])
        legend.append(f"{phase} {100 * share:.0f}%  ", style=PHASE_STYLE[phase])
    return [bar, legend]


def _side_by_side(left: list[Text], right: list[Text], left_width: int) -> list[Text]:
    blank = Text("")
    return [_fit(left[i] if i < len(left) else blank, left_width) + Text("  ") + (right[i] if i < len(right) else blank)
            for i in range(max(len(left), len(right)))]


def render(state: ViewState, width: int = 80, height: int | None = None) -> Panel:
    """The whole live panel for a terminal of ``width`` x ``height`` characters."""
    inner = width - 4
    alerts, codec = _alerts_row(state), _codec_row(state)
    lines = [Text(job_title(state, steps=False), style="bold"), _progress_row(state, inner), _metrics_row(state),
             _vote_row(state)] + ([alerts] if alerts is not None else [])
    if codec is not None and (height is None or height - 3 - len(lines) > len(PHASES)):
        lines.insert(4, codec)  # below the vote; on a terminal too short for it and the phase bars, it gives way
    room = None if height is None else height - 2 - len(lines)  # lines left inside the border
    right = min(PHASE_COLUMN, max(PHASE_COLUMN_MIN, inner // 3))
    left = inner - right - 2
    if left >= SIDE_BY_SIDE_CELLS * WORKER_CELL:
        workers = _workers(state, left, max_rows=None if room is None else room - 1)
        lines += _side_by_side(workers, _phase_bars(state, right), left)
    else:
        workers = _workers(state, inner)
        if room is None or len(workers) + 1 + len(PHASES) <= room:
            lines += workers + _phase_bars(state, inner)
        else:
            lines += _workers(state, inner, max_rows=room - 1 - 2) + _phase_stack(state, inner)
    for line in lines:
        line.no_wrap, line.overflow = True, "ellipsis"
    status = "finished: " + state.summary.reason if state.summary else "running"
    return Panel(Group(*lines), title="[bold]shield[/]", title_align="left", subtitle=status,
                 subtitle_align="right", border_style="blue", width=width)


class LivePanel:
    """A rich renderable drawing ``state`` at whatever size the console offers."""

    def __init__(self, state: ViewState) -> None:
        self.state = state

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield render(self.state, options.max_width, options.height or console.height)
