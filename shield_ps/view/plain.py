"""One plain text line per event (no colour, no cursor codes): the view for CI logs, files and ``--plain``.

``format_event(event, state)`` is pure: ``state`` is the view state *after* ``event`` was folded in (it supplies
totals, the elapsed time and the ETA). Worker events only make a line when they matter to a reader of the log
(connected, late, erased, left), not on every computing/done transition. Before the first step,
:class:`StartupLines` thins the start-up out: one join-progress line per change of its counts, rate-limited, and no
line per connecting worker.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from shield_ps.phases.names import TOTAL
from shield_ps.view import fmt
from shield_ps.view.codecs import step_text
from shield_ps.view.figures import epochs, eta_seconds, progress, waiting_line
from shield_ps.view.state import CATEGORIES, EventKind, UpdateAction, ViewState, WorkerState, event_kind

#: worker states worth a log line.
NOTABLE_WORKER_STATES = frozenset({WorkerState.CONNECTED, WorkerState.LATE, WorkerState.ERASED, WorkerState.LEFT})


def _elapsed(event: Mapping[str, Any], state: ViewState) -> str:
    time = event.get("time")
    if state.started is None or not isinstance(time, (int, float)):
        return "[+-:--:--]"
    return f"[+{fmt.duration(time - state.started)}]"


def job_title(state: ViewState, steps: bool = True) -> str:
    """One line naming the job: scheme and sizes, model, aggregator, attack, steps."""
    job = state.job
    if job is None:
        return "job: (not announced yet)"
    attack = "no attack" if job.attack in ("none", "?") else f"attack {job.attack} q={job.byzantine}"
    resumed = f" · resumed at step {job.start_step}" if job.resumed else ""
    return (f"{job.scheme} K={job.workers} f={job.files} r={job.replication} · {job.network}/{job.dataset} "
            f"b={job.batch_size} · {job.aggregator} · {attack}"
            + (f" · {job.total_steps} steps" if steps else "") + resumed)


def _job_line(event: Mapping[str, Any], state: ViewState) -> str:
    return f"job {job_title(state)}"


def _step_line(event: Mapping[str, Any], state: ViewState) -> str:
    done, total = progress(state)
    vote, times = state.vote, state.phases_last
    assert vote is not None
    epoch = epochs(state)
    parts = [f"step {done}/{total or '?'}", f"ep {epoch[0]}/{epoch[1]}" if epoch else f"ep {state.epoch}",
             f"lr {fmt.lr(state.lr)}",
             f"loss {fmt.num(state.loss)}",
             f"won {vote.won}/{vote.files}", f"dropped {vote.dropped}", f"corrupted {vote.corrupted}"]
    for category in CATEGORIES:  # lying, outvoted, slow, erased, relay: never mixed
        if getattr(vote, category):
            parts.append(f"{category} {fmt.ids(getattr(vote, category))}")
    if vote.action is UpdateAction.SKIP:
        parts.append("update skipped")
    elif vote.action is UpdateAction.LOWER_S:
        parts.append(f"s lowered to {vote.s if vote.s is not None else '?'}")
    if vote.hedges:
        parts.append(f"hedged {vote.hedges}")
    if vote.refused_rose:
        parts.append(f"refused {vote.refused}")
    if TOTAL in times:
        parts.append(f"in {times[TOTAL]:.3f}s")
    parts.append(f"eta {fmt.duration(eta_seconds(state))}")
    if state.codecs is not None:
        parts.append(f"codec {step_text(state.codecs)}")
    return " ".join(parts)


def _worker_line(event: Mapping[str, Any], state: ViewState) -> str | None:
    worker = event["worker"]
    view = state.workers[worker]
    if view.state not in NOTABLE_WORKER_STATES:
        return None
    address = f" ({view.address})" if view.address else ""
    klass = f" class {view.klass}" if view.klass and view.state is WorkerState.CONNECTED else ""
    return f"worker {worker} {view.state.value}{address}{klass}"


def _classes_line(event: Mapping[str, Any], state: ViewState) -> str:
    tol = f" · sketch tolerance {state.tolerance:.3g}" if state.tolerance is not None else ""
    return (f"{len(state.classes)} determinism class(es): "
            + " · ".join(f"{cid} workers {fmt.ids(ws)}" for cid, ws in state.classes) + tol)


def _eval_line(event: Mapping[str, Any], state: ViewState) -> str:
    result = state.last_eval
    assert result is not None
    return (f"eval step {result.step}: top1 {fmt.pct(result.top1)} top5 {fmt.pct(result.top5)} "
            f"loss {fmt.num(result.loss)} (best {fmt.pct(state.best_top1)})")


def _checkpoint_line(event: Mapping[str, Any], state: ViewState) -> str | None:
    """Only a failed checkpoint makes a line (in every mode: it is never silent); a written one shows in the
    summary's ``checkpoints`` row."""
    outcome = state.checkpoint
    assert outcome is not None
    return None if outcome.ok else f"CHECKPOINT at step {outcome.step} NOT WRITTEN: {outcome.error}"


def _summary_line(event: Mapping[str, Any], state: ViewState) -> None:
    return None  # the summary is printed by View.close(), once, in every mode


def _join_line(event: Mapping[str, Any], state: ViewState) -> str | None:
    return waiting_line(state)


_LINES: dict[EventKind, Callable[[Mapping[str, Any], ViewState], str | None]] = {
    EventKind.JOB: _job_line,
    EventKind.STEP: _step_line,
    EventKind.WORKER: _worker_line,
    EventKind.EVAL: _eval_line,
    EventKind.CHECKPOINT: _checkpoint_line,
    EventKind.SUMMARY: _summary_line,
    EventKind.CLASSES: _classes_line,
    EventKind.JOIN: _join_line,
}


def format_event(event: Any, state: ViewState) -> str | None:
    """The log line for ``event`` (already folded into ``state``), or None when it makes no line.

    Call it only for events the fold accepted (it trusts their fields).
    """
    kind = event_kind(event)
    if kind is None:
        return None
    line = _LINES[kind](event, state)
    return None if line is None else f"{_elapsed(event, state)} {line}"


#: before the first step, at most one join-progress line per this many seconds (the all-ready line comes at once)
JOIN_LINE_PERIOD_S = 5.0


class StartupLines:
    """Which plain lines to print before the first step, when K agents connect and load at once.

    The join progress (``waiting for agents: R ready, L loading, M missing``) is printed once per change of its
    counts (a changing deadline alone is no change), at most once per ``period`` seconds: a change inside the
    period is held and printed when the period ends (:meth:`due`), or replaced by a newer one. The line that says
    every agent is ready is printed at once. A worker's ``connected`` line is left out before the first step (the
    progress line counts it; left, late and erased workers still get theirs). From the first step on every line
    passes. Not thread-safe: the view's output thread owns it."""

    def __init__(self, period: float = JOIN_LINE_PERIOD_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.period, self._clock = period, clock
        self._counts: tuple[int, int, int] | None = None
        self._printed_at: float | None = None
        self._held: str | None = None

    def admit(self, event: Any, state: ViewState, line: str) -> list[str]:
        """The lines to print now for ``event`` (already folded into ``state``) whose plain line is ``line``."""
        kind = event_kind(event)
        if state.step is None and kind is EventKind.WORKER and state.workers[event["worker"]].state is \
                WorkerState.CONNECTED:
            return []
        if kind is not EventKind.JOIN or state.join is None or state.step is not None:
            return self._release() + [line]
        join = state.join
        counts = (join.ready, join.loading, join.missing)
        if counts == self._counts:
            return []
        self._counts = counts
        now = self._clock()
        if (join.loading == 0 and join.missing == 0) or self._printed_at is None or \
                now - self._printed_at >= self.period:
            self._held, self._printed_at = None, now
            return [line]
        self._held = line
        return []

    def due(self) -> list[str]:
        """The held progress line, once its period has ended."""
        if self._held is not None and self._printed_at is not None and \
                self._clock() - self._printed_at >= self.period:
            return self._release()
        return []

    def _release(self) -> list[str]:
        held, self._held = self._held, None
        if held is None:
            return []
        self._printed_at = self._clock()
        return [held]
