"""The view model: run events (``docs/metrics.md``) folded into one immutable :class:`ViewState`.

Everything here is a pure function of its arguments. ``fold(state, event)`` returns a new state and never raises:
events may come from a remote PS (``shield-ps watch``) or a hand-edited ``metrics.jsonl``, so a malformed event is
counted in ``state.malformed`` and otherwise ignored. Because states are immutable, a renderer thread may read the
latest state while the producer folds the next event, without a lock.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from shield_ps.events import WorkerState

#: the PS-side phases of one step, in the order they happen (``times`` in a ``step`` event).
PHASES: tuple[str, ...] = ("broadcast", "compute", "gather", "vote", "aggregate", "update")
#: worker ids above this are refused (a hostile event must not make us allocate a huge table).
MAX_WORKERS = 4096
#: how many recent (step, time) points the ETA is estimated from.
RATE_WINDOW = 32


class EventKind(str, enum.Enum):
    JOB = "job"
    STEP = "step"
    WORKER = "worker"
    EVAL = "eval"
    SUMMARY = "summary"
    CLASSES = "classes"



class BadEvent(ValueError):
    """An event field is missing or of the wrong type (internal: fold turns it into ``malformed += 1``)."""


@dataclass(frozen=True)
class JobInfo:
    scheme: str = "?"
    workers: int = 0
    files: int = 0
    replication: int = 0
    network: str = "?"
    dataset: str = "?"
    batch_size: int = 0
    aggregator: str = "?"
    attack: str = "none"
    byzantine: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    start_step: int = 0
    resumed: bool = False


@dataclass(frozen=True)
class WorkerView:
    state: WorkerState = WorkerState.UNKNOWN
    compute_s: float | None = None
    address: str = ""
    klass: str = ""  #: determinism class (docs/byzantine.md)
    disagreements: int = 0  #: steps in which this worker's value lost to a majority
    erasures: int = 0  #: steps in which this worker sent nothing in time
    flagged_now: bool = False  #: flagged in the last step


@dataclass(frozen=True)
class VoteOutcome:
    step: int
    files: int
    won: int
    dropped: int
    corrupted: int
    flagged: tuple[int, ...]
    erased: tuple[int, ...]


@dataclass(frozen=True)
class EvalResult:
    step: int
    top1: float
    top5: float | None
    loss: float | None


@dataclass(frozen=True)
class Summary:
    steps: int
    wall_s: float
    best_top1: float | None
    final_top1: float | None
    files_corrupted: int
    files_dropped: int
    flagged_workers: tuple[int, ...]
    reason: str


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
    workers: tuple[WorkerView, ...] = ()
    phases_last: Mapping[str, float] = field(default_factory=dict)
    phases_sum: Mapping[str, float] = field(default_factory=dict)
    last_eval: EvalResult | None = None
    best_top1: float | None = None
    recent: tuple[tuple[int, float], ...] = ()  #: (step, time) of the last RATE_WINDOW steps
    summary: Summary | None = None
    classes: tuple[tuple[str, tuple[int, ...]], ...] = ()  #: (class id, its workers), from the latest classes event
    tolerance: float | None = None  #: the sketch vote's relative tolerance
    malformed: int = 0


def _evolve(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for our frozen, validation-free dataclasses at a tenth of its cost (it runs per event)."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new


# --- field readers: every one raises BadEvent on a wrong type --------------------------------------------------------

def _num(event: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
    value = event.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadEvent(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _int(event: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = event.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadEvent(f"{key}: expected an integer, got {value!r}")
    return value


def _count(event: Mapping[str, Any], key: str, default: int | None = 0) -> int:
    value = _int(event, key, default)
    if value < 0:
        raise BadEvent(f"{key}: expected a count >= 0, got {value}")
    return value


def _str(event: Mapping[str, Any], key: str, default: str = "?") -> str:
    value = event.get(key, default)
    if value is None:
        return default
    return str(value)[:64]


def _ids(event: Mapping[str, Any], key: str) -> tuple[int, ...]:
    value = event.get(key) or ()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_WORKERS:
        raise BadEvent(f"{key}: expected a list of worker ids")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_WORKERS for v in value):
        raise BadEvent(f"{key}: worker ids must be integers in [0, {MAX_WORKERS})")
    return tuple(sorted(set(value)))


def _grow(workers: tuple[WorkerView, ...], size: int) -> tuple[WorkerView, ...]:
    return workers + (WorkerView(),) * (size - len(workers)) if size > len(workers) else workers


# --- one fold per event kind ----------------------------------------------------------------------------------------

def _fold_job(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    workers = _int(event, "workers", 0)
    if not 0 <= workers <= MAX_WORKERS:
        raise BadEvent(f"workers: {workers} out of range")
    job = JobInfo(
        scheme=_str(event, "scheme"), workers=workers, files=_count(event, "files"),
        replication=_count(event, "replication"), network=_str(event, "network"), dataset=_str(event, "dataset"),
        batch_size=_count(event, "batch_size"), aggregator=_str(event, "aggregator"),
        attack=_str(event, "attack", "none"), byzantine=_count(event, "byzantine"),
        total_steps=_count(event, "total_steps"), steps_per_epoch=_count(event, "steps_per_epoch"),
        start_step=_count(event, "start_step"), resumed=bool(event.get("resumed", False)),
    )
    # A resumed run starts a new rate window (the gap while it was down is not step time) and a new summary.
    return dict(job=job, workers=_grow(state.workers, workers), recent=(), summary=None)


def _fold_step(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    step, time = _count(event, "step", None), _num(event, "time")
    flagged, erased = _ids(event, "flagged"), _ids(event, "erased")
    vote = VoteOutcome(
        step=step, files=_count(event, "files"), won=_count(event, "files_won"),
        dropped=_count(event, "files_dropped"), corrupted=_count(event, "files_corrupted"),
        flagged=flagged, erased=erased,
    )
    times = event.get("times") or {}
    if not isinstance(times, dict):
        raise BadEvent("times: expected a map of phase -> seconds")
    phases = {name: _num(times, name, 0.0) or 0.0 for name in (*PHASES, "total") if name in times}
    workers = _grow(state.workers, max((*flagged, *erased), default=-1) + 1)
    flagged_set, erased_set = set(flagged), set(erased)
    workers = tuple(
        _evolve(w, flagged_now=i in flagged_set, disagreements=w.disagreements + (i in flagged_set),
                erasures=w.erasures + (i in erased_set))
        if w.flagged_now or i in flagged_set or i in erased_set else w
        for i, w in enumerate(workers)
    )
    recent = (state.recent + ((step, time),))[-RATE_WINDOW:] if time is not None else state.recent
    return dict(
        step=step, epoch=_count(event, "epoch", state.epoch or 0), lr=_num(event, "lr"),
        loss=_num(event, "loss"), vote=vote, steps_seen=state.steps_seen + 1,
        files_corrupted=state.files_corrupted + vote.corrupted, files_dropped=state.files_dropped + vote.dropped,
        workers=workers, phases_last=phases,
        phases_sum={k: state.phases_sum.get(k, 0.0) + phases.get(k, 0.0) for k in {*state.phases_sum, *phases}},
        recent=recent,
    )


def _fold_worker(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    worker = _int(event, "worker")
    if not 0 <= worker < MAX_WORKERS:
        raise BadEvent(f"worker: {worker} out of range")
    try:
        new_state = WorkerState(event.get("state"))
    except ValueError:
        raise BadEvent(f"state: unknown worker state {event.get('state')!r}") from None
    workers = _grow(state.workers, worker + 1)
    old = workers[worker]
    compute_s = _num(event, "compute_s")
    updated = _evolve(old, state=new_state, compute_s=old.compute_s if compute_s is None else compute_s,
                      address=_str(event, "address", old.address), klass=_str(event, "class", old.klass))
    return dict(workers=workers[:worker] + (updated,) + workers[worker + 1:])


def _fold_eval(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    top1 = _num(event, "top1")
    if top1 is None:
        raise BadEvent("top1: missing")
    result = EvalResult(step=_count(event, "step", None), top1=top1, top5=_num(event, "top5"), loss=_num(event, "loss"))
    best = top1 if state.best_top1 is None else max(state.best_top1, top1)
    return dict(last_eval=result, best_top1=best)


def _fold_summary(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    summary = Summary(
        steps=_count(event, "steps", state.steps_seen), wall_s=_num(event, "wall_s", 0.0) or 0.0,
        best_top1=_num(event, "best_top1"), final_top1=_num(event, "final_top1"),
        files_corrupted=_count(event, "files_corrupted", state.files_corrupted),
        files_dropped=_count(event, "files_dropped", state.files_dropped),
        flagged_workers=_ids(event, "flagged_workers"), reason=_str(event, "reason", "completed")[:200],
    )
    return dict(summary=summary)


def _fold_classes(state: ViewState, event: Mapping[str, Any]) -> dict[str, Any]:
    entries = event.get("classes")
    if not isinstance(entries, list) or len(entries) > MAX_WORKERS:
        raise BadEvent("classes: expected a list")
    classes = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise BadEvent("classes: expected maps")
        classes.append((_str(entry, "id"), _ids(entry, "workers")))
    return dict(classes=tuple(classes), tolerance=_num(event, "tolerance"))


#: kind -> function of (state, event) returning the fields that change (raises BadEvent)
_FOLDS: dict[EventKind, Callable[[ViewState, Mapping[str, Any]], dict[str, Any]]] = {
    EventKind.JOB: _fold_job,
    EventKind.STEP: _fold_step,
    EventKind.WORKER: _fold_worker,
    EventKind.EVAL: _fold_eval,
    EventKind.SUMMARY: _fold_summary,
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
        time = _num(event, "time")
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


# --- derived figures ------------------------------------------------------------------------------------------------

def progress(state: ViewState) -> tuple[int, int]:
    """(completed steps, total steps); total is 0 when unknown."""
    total = state.job.total_steps if state.job else 0
    done = 0 if state.step is None else state.step + 1
    return (min(done, total) if total else done), total


def epochs(state: ViewState) -> tuple[int, int] | None:
    """(current epoch counted from 1, total epochs), or None when the job gave no epoch size."""
    done, total = progress(state)
    if state.job is None or not state.job.steps_per_epoch or state.epoch is None or not total:
        return None
    return state.epoch + 1, -(-total // state.job.steps_per_epoch)


def seconds_per_step(state: ViewState) -> float | None:
    """Mean wall time between the recent step events (None until two steps are seen)."""
    if len(state.recent) < 2:
        return None
    (s0, t0), (s1, t1) = state.recent[0], state.recent[-1]
    return (t1 - t0) / (s1 - s0) if s1 > s0 and t1 >= t0 else None


def eta_seconds(state: ViewState) -> float | None:
    """Estimated seconds until the last step, from the recent step rate."""
    done, total = progress(state)
    rate = seconds_per_step(state)
    return None if rate is None or not total else max(total - done, 0) * rate


def phase_means(state: ViewState) -> dict[str, float]:
    """Mean seconds per step of each phase seen so far, in :data:`PHASES` order (plus ``total`` if reported)."""
    n = max(state.steps_seen, 1)
    return {k: state.phases_sum[k] / n for k in (*PHASES, "total") if k in state.phases_sum}


def final_summary(state: ViewState) -> Summary:
    """The run's summary: the ``summary`` event if one came, else one built from what was seen."""
    if state.summary is not None:
        return state.summary
    flagged = tuple(i for i, w in enumerate(state.workers) if w.disagreements)
    final = state.last_eval.top1 if state.last_eval else None
    wall = (state.now - state.started) if state.now is not None and state.started is not None else 0.0
    return Summary(steps=state.steps_seen, wall_s=wall, best_top1=state.best_top1, final_top1=final,
                   files_corrupted=state.files_corrupted, files_dropped=state.files_dropped,
                   flagged_workers=flagged, reason="no summary received")
