"""The view model: run events (``docs/metrics.md``) folded into one immutable :class:`ViewState`.

Everything here is a pure function of its arguments. ``fold(state, event)`` returns a new state and never raises:
events may come from a remote PS (``shield-ps watch``) or a hand-edited ``metrics.jsonl``, so a malformed event is
counted in ``state.malformed`` and otherwise ignored. Because states are immutable, a renderer thread may read the
latest state while the producer folds the next event, without a lock.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shield_ps.events import WorkerState
from shield_ps.phases.names import PHASE_KEYS, TOTAL
from shield_ps.view import fields as ev
from shield_ps.view.codecs import CodecUse, add, read_codecs
from shield_ps.view.fields import MAX_WORKERS, BadEvent, WorkerCounts
from shield_ps.view.records import (
    CheckpointOutcome,
    EvalResult,
    JobInfo,
    JoinProgress,
    Summary,
    UpdateAction,
    VoteOutcome,
    WorkerView,
)

__all__ = ["CATEGORIES", "PHASES", "CheckpointOutcome", "EvalResult", "EventKind", "JobInfo", "JoinProgress",
           "Summary", "UpdateAction", "ViewState", "VoteOutcome", "WorkerState", "WorkerView", "event_kind", "fold",
           "fold_all"]

#: the PS-side phases of one step, by their keys in a ``step`` event's ``times``
#: (:class:`~shield_ps.phases.names.Phase`).
PHASES: tuple[str, ...] = PHASE_KEYS
#: how many recent (step, time) points the ETA is estimated from.
RATE_WINDOW = 32
#: how many checkpoint errors a state keeps (a hostile stream must not grow it without bound).
MAX_ERRORS = 64
#: the step event's worker categories, never mixed (shield_ps.phases.accounting).
CATEGORIES: tuple[str, ...] = ("lying", "outvoted", "slow", "erased", "relay")


class EventKind(str, enum.Enum):
    JOB = "job"
    STEP = "step"
    WORKER = "worker"
    EVAL = "eval"
    CHECKPOINT = "checkpoint"
    SUMMARY = "summary"
    JOIN = "join"
    CLASSES = "classes"


@dataclass(frozen=True)
class ViewState:
    job: JobInfo | None = None
    started: float | None = None  #: time of the first event seen
    now: float | None = None  #: time of the latest event seen
    step: int | None = None  #: last completed step (0-based)
    epoch: int | None = None
    lr: float | None = None
    loss: float | None = None
    vote: VoteOutcome | None = None
    steps_seen: int = 0
    files_corrupted: int = 0
    files_dropped: int = 0
    steps_skipped: int = 0
    steps_lowered_s: int = 0
    hedges: int = 0
    refused: int = 0  #: the PS's count of connections refused before authentication (per PS process)
    workers: tuple[WorkerView, ...] = ()
    phases_last: Mapping[str, float] = field(default_factory=dict)
    phases_sum: Mapping[str, float] = field(default_factory=dict)
    last_eval: EvalResult | None = None
    best_top1: float | None = None
    recent: tuple[tuple[int, float], ...] = ()  #: (step, time) of the last RATE_WINDOW steps
    checkpoint: CheckpointOutcome | None = None  #: the latest checkpoint event
    last_checkpoint: int | None = None  #: the newest step whose checkpoint was written
    checkpoint_errors: tuple[CheckpointOutcome, ...] = ()  #: failed checkpoint writes (the first MAX_ERRORS)
    checkpoint_failures: int = 0  #: how many checkpoint writes failed in all
    summary: Summary | None = None
    classes: tuple[tuple[str, tuple[int, ...]], ...] = ()  #: (class id, its workers), from the latest classes event
    tolerance: float | None = None  #: the sketch vote's relative tolerance
    join: JoinProgress | None = None  #: the latest join progress (shown until the first step)
    codecs: CodecUse | None = None  #: the latest step's codecs per direction (None: not reported)
    codec_totals: CodecUse | None = None  #: their sums over the steps that reported them
    malformed: int = 0


def _evolve(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for our frozen, validation-free dataclasses at a tenth of its cost (it runs per
    event)."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


def _legacy_counts(state: ViewState, ids: tuple[int, ...]) -> WorkerCounts:
    """An old summary's ``flagged_workers`` (ids only): the counts are the view's own, where it saw any."""
    return tuple((i, state.workers[i].disagreements if i < len(state.workers) and state.workers[i].disagreements
                  else None) for i in ids)


def _aggregation(event: Mapping[str, Any]) -> tuple[UpdateAction, int | None, str | None]:
    value = event.get("aggregation")
    if value is None:
        return UpdateAction.AGGREGATE, None, None
    if not isinstance(value, dict):
        raise BadEvent("aggregation: expected a map with action, s and reason")
    try:
        action = UpdateAction(value.get("action", UpdateAction.AGGREGATE.value))
    except ValueError:
        raise BadEvent(f"aggregation.action: unknown action {value.get('action')!r}") from None
    return action, ev.opt_count(value, "s"), ev.text(value, "reason")


def _checkpoint_errors(event: Mapping[str, Any]) -> tuple[tuple[CheckpointOutcome, ...], int]:
    """A summary's ``checkpoint_errors`` ([{step, error}, ...]): the first MAX_ERRORS and how many in all."""
    value = event.get("checkpoint_errors") or ()
    if not isinstance(value, (list, tuple)):
        raise BadEvent("checkpoint_errors: expected a list of {step, error}")
    errors = []
    for item in value[:MAX_ERRORS]:
        if not isinstance(item, dict):
            raise BadEvent("checkpoint_errors: expected a list of {step, error}")
        errors.append(CheckpointOutcome(step=ev.count(item, "step", None), ok=False,
                                        error=ev.text(item, "error") or "unknown error"))
    return tuple(errors), len(value)


def _grow(workers: tuple[WorkerView, ...], size: int) -> tuple[WorkerView, ...]:
    return workers + (WorkerView(),) * (size - len(workers)) if size > len(workers) else workers


# --- one fold per event kind ----------------------------------------------------------------------------------------

def _fold_job(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    workers = ev.integer(event, "workers", 0)
    if not 0 <= workers <= MAX_WORKERS:
        raise BadEvent(f"workers: {workers} out of range")
    job = JobInfo(
        scheme=ev.string(event, "scheme"), workers=workers, files=ev.count(event, "files"),
        replication=ev.count(event, "replication"), network=ev.string(event, "network"),
        dataset=ev.string(event, "dataset"),
        batch_size=ev.count(event, "batch_size"), aggregator=ev.string(event, "aggregator"),
        attack=ev.string(event, "attack", "none"), byzantine=ev.count(event, "byzantine"),
        total_steps=ev.count(event, "total_steps"), steps_per_epoch=ev.count(event, "steps_per_epoch"),
        start_step=ev.count(event, "start_step"), resumed=bool(event.get("resumed", False)),
    )
    # A resumed run starts a new rate window (the gap while it was down is not step time) and a new summary.
    # ``refused`` is counted per PS process, so it starts again from 0 too.
    return dict(job=job, workers=_grow(state.workers, workers), recent=(), summary=None, refused=0)


def _step_categories(event: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The step's worker categories; an old metrics file's ``flagged`` counts as ``outvoted`` (it meant
    "lost a vote", which is all it could prove)."""
    categories = {name: ev.worker_ids(event, name) for name in CATEGORIES}
    if "outvoted" not in event and "flagged" in event:
        categories["outvoted"] = tuple(sorted(set(ev.worker_ids(event, "flagged")) - set(categories["lying"])))
    return categories


def _mark(worker: WorkerView, index: int, sets: Mapping[str, set[int]]) -> WorkerView:
    lying, outvoted, slow = index in sets["lying"], index in sets["outvoted"], index in sets["slow"]
    return _evolve(worker, lying_now=lying, outvoted_now=outvoted, slow_now=slow, lies=worker.lies + lying,
                   disagreements=worker.disagreements + outvoted, slow_steps=worker.slow_steps + slow,
                   erasures=worker.erasures + (index in sets["erased"]))


def _fold_step(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    step, time = ev.count(event, "step", None), ev.number(event, "time")
    categories = _step_categories(event)
    action, s, reason = _aggregation(event)
    refused = ev.opt_count(event, "refused")
    vote = VoteOutcome(
        step=step, files=ev.count(event, "files"), won=ev.count(event, "files_won"),
        dropped=ev.count(event, "files_dropped"), corrupted=ev.count(event, "files_corrupted"), **categories,
        action=action, s=s, reason=reason, hedges=ev.count(event, "hedges"), refused=refused,
        refused_rose=refused is not None and refused > state.refused,
    )
    times = event.get("times") or {}
    if not isinstance(times, dict):
        raise BadEvent("times: expected a map of phase -> seconds")
    phases = {name: ev.number(times, name, 0.0) or 0.0 for name in (*PHASES, TOTAL) if name in times}
    workers = _grow(state.workers, max((i for ids in categories.values() for i in ids), default=-1) + 1)
    sets = {name: set(ids) for name, ids in categories.items()}
    marked = set().union(*sets.values())
    workers = tuple(_mark(w, i, sets) if w.lying_now or w.outvoted_now or w.slow_now or i in marked else w
                    for i, w in enumerate(workers))
    recent = (state.recent + ((step, time),))[-RATE_WINDOW:] if time is not None else state.recent
    codecs = read_codecs(event)
    return dict(
        step=step, epoch=ev.count(event, "epoch", state.epoch or 0), lr=ev.number(event, "lr"),
        loss=ev.number(event, "loss"), vote=vote, steps_seen=state.steps_seen + 1,
        files_corrupted=state.files_corrupted + vote.corrupted, files_dropped=state.files_dropped + vote.dropped,
        steps_skipped=state.steps_skipped + (action is UpdateAction.SKIP),
        steps_lowered_s=state.steps_lowered_s + (action is UpdateAction.LOWER_S),
        hedges=state.hedges + vote.hedges, refused=state.refused if refused is None else refused,
        workers=workers, phases_last=phases,
        phases_sum={k: state.phases_sum.get(k, 0.0) + phases.get(k, 0.0) for k in {*state.phases_sum, *phases}},
        recent=recent, codecs=codecs, codec_totals=add(state.codec_totals, codecs),
    )


def _fold_worker(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    worker = ev.integer(event, "worker")
    if not 0 <= worker < MAX_WORKERS:
        raise BadEvent(f"worker: {worker} out of range")
    try:
        new_state = WorkerState(event.get("state"))
    except ValueError:
        raise BadEvent(f"state: unknown worker state {event.get('state')!r}") from None
    workers = _grow(state.workers, worker + 1)
    old = workers[worker]
    compute_s = ev.number(event, "compute_s")
    updated = _evolve(old, state=new_state, compute_s=old.compute_s if compute_s is None else compute_s,
                      address=ev.string(event, "address", old.address), klass=ev.string(event, "class", old.klass))
    return dict(workers=workers[:worker] + (updated,) + workers[worker + 1:])


def _fold_eval(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    top1 = ev.number(event, "top1")
    if top1 is None:
        raise BadEvent("top1: missing")
    result = EvalResult(step=ev.count(event, "step", None), top1=top1, top5=ev.number(event, "top5"),
                        loss=ev.number(event, "loss"))
    best = top1 if state.best_top1 is None else max(state.best_top1, top1)
    return dict(last_eval=result, best_top1=best)


def _fold_checkpoint(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    ok = event.get("ok")
    if not isinstance(ok, bool):
        raise BadEvent(f"ok: expected true or false, got {ok!r}")
    outcome = CheckpointOutcome(step=ev.count(event, "step", None), ok=ok,
                                error=None if ok else ev.text(event, "error") or "unknown error")
    if ok:
        last = outcome.step if state.last_checkpoint is None else max(state.last_checkpoint, outcome.step)
        return dict(checkpoint=outcome, last_checkpoint=last)
    errors = state.checkpoint_errors + (outcome,) if len(state.checkpoint_errors) < MAX_ERRORS \
        else state.checkpoint_errors
    return dict(checkpoint=outcome, checkpoint_errors=errors, checkpoint_failures=state.checkpoint_failures + 1)


def _fold_summary(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    complete = event.get("metrics_complete")
    if complete is not None and not isinstance(complete, bool):
        raise BadEvent(f"metrics_complete: expected true or false, got {complete!r}")
    outvoted = ev.count_map(event, "outvoted_workers") if "outvoted_workers" in event or \
        "flagged_workers" not in event else _legacy_counts(state, ev.worker_ids(event, "flagged_workers"))
    errors, failures = _checkpoint_errors(event)
    summary = Summary(
        steps=ev.count(event, "steps", state.steps_seen), wall_s=ev.number(event, "wall_s", 0.0) or 0.0,
        best_top1=ev.number(event, "best_top1"), final_top1=ev.number(event, "final_top1"),
        files_corrupted=ev.count(event, "files_corrupted", state.files_corrupted),
        files_dropped=ev.count(event, "files_dropped", state.files_dropped),
        reason=ev.string(event, "reason", "completed")[:200],
        lying_workers=ev.count_map(event, "lying_workers"), outvoted_workers=outvoted,
        slow_workers=ev.count_map(event, "slow_workers"), erased_workers=ev.count_map(event, "erased_workers"),
        relay_workers=ev.count_map(event, "relay_workers"),
        steps_skipped=ev.opt_count(event, "steps_skipped"), steps_lowered_s=ev.opt_count(event, "steps_lowered_s"),
        refused=ev.opt_count(event, "refused"), checkpoint_errors=errors, checkpoint_failures=failures,
        last_checkpoint=ev.opt_count(event, "last_checkpoint"), metrics_complete=complete,
    )
    return dict(summary=summary)


def _fold_join(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    return dict(join=JoinProgress(ready=ev.count(event, "ready"), loading=ev.count(event, "loading"),
                                  missing=ev.count(event, "missing"), left_s=ev.number(event, "left_s")))


def _fold_classes(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    entries = event.get("classes")
    if not isinstance(entries, list) or len(entries) > MAX_WORKERS or not all(isinstance(e, dict) for e in entries):
        raise BadEvent("classes: expected a list of maps")
    classes = tuple((ev.string(e, "id"), ev.worker_ids(e, "workers")) for e in entries)
    return dict(classes=classes, tolerance=ev.number(event, "tolerance"))


#: kind -> function of (state, event) returning the fields that change (raises BadEvent)
_FOLDS: dict[EventKind, Callable[[ViewState, Mapping[str, Any]], dict[str, Any]]] = {
    EventKind.JOB: _fold_job,
    EventKind.STEP: _fold_step,
    EventKind.WORKER: _fold_worker,
    EventKind.EVAL: _fold_eval,
    EventKind.CHECKPOINT: _fold_checkpoint,
    EventKind.SUMMARY: _fold_summary,
    EventKind.JOIN: _fold_join,
    EventKind.CLASSES: _fold_classes,
}


def event_kind(event: Any) -> EventKind | None:
    """The kind of ``event``, or None when it is not a dict with a known ``kind``."""
    if not isinstance(event, dict):
        return None
    try:
        return EventKind(event.get("kind"))
    except ValueError:
        return None


def fold(state: ViewState, event: Any) -> ViewState:
    """Return the state after ``event``. Unknown kinds and malformed events only increment ``malformed``."""
    kind = event_kind(event)
    try:
        if kind is None:
            raise BadEvent("not an event")
        time = ev.number(event, "time")
        changes = _FOLDS[kind](state, event)
    except BadEvent:
        return _evolve(state, malformed=state.malformed + 1)
    if time is not None:
        changes.update(started=time if state.started is None else state.started, now=time)
    return _evolve(state, **changes)


def fold_all(events: Iterable[Any], state: ViewState | None = None) -> ViewState:
    """Fold every event in order, starting from ``state`` (an empty state by default)."""
    state = ViewState() if state is None else state
    for event in events:
        state = fold(state, event)
    return state
