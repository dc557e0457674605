"""One plain text line per event (no colour, no cursor codes): the view for CI logs, files and ``--plain``.

``format_event(event, state)`` is pure: ``state`` is the view state *after* ``event`` was folded in (it supplies
totals, the elapsed time and the ETA). Worker events only make a line when they matter to a reader of the log
(connected, late, erased, left), not on every computing/done transition.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

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
    if "total" in times:
        parts.append(f"in {times['total']:.3f}s")
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
