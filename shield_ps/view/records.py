"""The records a :class:`~shield_ps.view.state.ViewState` is made of, one per thing an event reports (immutable).

``shield_ps.view.state`` folds events into them and re-exports them; this module only defines them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from shield_ps.events import WorkerState
from shield_ps.view.fields import WorkerCounts


class UpdateAction(str, enum.Enum):
    """What a step did with the files it won (``aggregation.action`` in a ``step`` event)."""

    AGGREGATE = "aggregate"
    LOWER_S = "lower-s"  #: aggregated with a lowered s (too few files survived for the configured one)
    SKIP = "skip"  #: no update this step (too few files survived for any valid s)


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
    disagreements: int = 0  #: steps in which this worker was outvoted (its digest lost a vote; honest ones can be)
    lies: int = 0  #: steps in which it was proven lying (payload not matching its own digest, protocol violation)
    slow_steps: int = 0  #: steps in which it missed a deadline
    erasures: int = 0  #: steps in which this worker sent none of its replies
    lying_now: bool = False  #: proven lying in the last step (the only mark the live panel shows in red)
    outvoted_now: bool = False  #: outvoted in the last step
    slow_now: bool = False  #: missed a deadline in the last step


@dataclass(frozen=True)
class VoteOutcome:
    step: int
    files: int
    won: int
    dropped: int
    corrupted: int
    lying: tuple[int, ...] = ()
    outvoted: tuple[int, ...] = ()  #: an old metrics file's ``flagged`` is read as outvoted
    slow: tuple[int, ...] = ()
    erased: tuple[int, ...] = ()
    relay: tuple[int, ...] = ()  #: reported by another agent for a relay that delivered nothing valid
    action: UpdateAction = UpdateAction.AGGREGATE
    s: int | None = None  #: the s the aggregator ran with (None when not reported)
    reason: str | None = None  #: why the update was skipped or s lowered
    hedges: int = 0  #: fetches hedged to a second holder
    refused: int | None = None  #: connections refused before authentication so far (None when not reported)
    refused_rose: bool = False  #: ``refused`` grew since the previous step


@dataclass(frozen=True)
class EvalResult:
    step: int
    top1: float
    top5: float | None
    loss: float | None


@dataclass(frozen=True)
class CheckpointOutcome:
    step: int
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class Summary:
    """The run's summary. Fields an older PS did not report are None (or empty) and shown as unknown."""

    steps: int
    wall_s: float
    best_top1: float | None
    final_top1: float | None
    files_corrupted: int
    files_dropped: int
    reason: str
    lying_workers: WorkerCounts = ()
    outvoted_workers: WorkerCounts = ()
    slow_workers: WorkerCounts = ()
    erased_workers: WorkerCounts = ()
    relay_workers: WorkerCounts = ()
    steps_skipped: int | None = None
    steps_lowered_s: int | None = None
    refused: int | None = None
    checkpoint_errors: tuple[CheckpointOutcome, ...] = ()  #: the first state.MAX_ERRORS failed writes
    checkpoint_failures: int = 0  #: how many checkpoint writes failed in all
    last_checkpoint: int | None = None
    metrics_complete: bool | None = None


@dataclass(frozen=True)
class JoinProgress:
    """The PS's wait for its agents: ready, still loading, never connected, and seconds left at that moment."""

    ready: int
    loading: int
    missing: int
    left_s: float | None
