"""Figures derived from a :class:`~shield_ps.view.state.ViewState` (pure functions): progress, epochs, the step rate
and ETA, phase means, the join progress line, the median step time, and the run's summary (the ``summary`` event, or
one built from what the view saw)."""
from __future__ import annotations

from shield_ps.phases.names import TOTAL
from shield_ps.view.fields import WorkerCounts
from shield_ps.view.state import PHASES, Summary, ViewState


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
    return {k: state.phases_sum[k] / n for k in (*PHASES, TOTAL) if k in state.phases_sum}


def worker_counts(state: ViewState, attribute: str) -> WorkerCounts:
    """(worker, count) of the workers whose ``attribute`` count (``lies``, ``disagreements``, ...) is not 0."""
    return tuple((i, getattr(w, attribute)) for i, w in enumerate(state.workers) if getattr(w, attribute))


def final_summary(state: ViewState) -> Summary:
    """The run's summary: the ``summary`` event if one came, else one built from what was seen."""
    if state.summary is not None:
        return state.summary
    final = state.last_eval.top1 if state.last_eval else None
    wall = (state.now - state.started) if state.now is not None and state.started is not None else 0.0
    done = 0 if state.step is None else state.step + 1  # of the whole run, resumed or not
    return Summary(steps=done, wall_s=wall, best_top1=state.best_top1, final_top1=final,
                   files_corrupted=state.files_corrupted, files_dropped=state.files_dropped,
                   reason="no summary received", lying_workers=worker_counts(state, "lies"),
                   outvoted_workers=worker_counts(state, "disagreements"),
                   slow_workers=worker_counts(state, "slow_steps"), erased_workers=worker_counts(state, "erasures"),
                   steps_skipped=state.steps_skipped, steps_lowered_s=state.steps_lowered_s, refused=state.refused,
                   checkpoint_errors=state.checkpoint_errors, checkpoint_failures=state.checkpoint_failures,
                   last_checkpoint=state.last_checkpoint)


def waiting_line(state: ViewState) -> str | None:
    """``waiting for agents: R ready, L loading, M missing (Ns left)`` while the PS waits for its agents (no step
    yet), else None."""
    join = state.join
    if join is None or state.step is not None:
        return None
    left = "" if join.left_s is None else f" ({join.left_s:.0f}s left)"
    return f"waiting for agents: {join.ready} ready, {join.loading} loading, {join.missing} missing{left}"


def median_step_seconds(state: ViewState) -> float | None:
    """Median wall time between consecutive recent step events (the last :data:`RATE_WINDOW` steps), so a slow
    start-up does not count as step time."""
    gaps = sorted((t1 - t0) / (s1 - s0)
                  for (s0, t0), (s1, t1) in zip(state.recent, state.recent[1:], strict=False) if s1 > s0)
    if not gaps:
        return None
    mid = len(gaps) // 2
    return gaps[mid] if len(gaps) % 2 else (gaps[mid - 1] + gaps[mid]) / 2
