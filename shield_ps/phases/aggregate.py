"""The aggregate phase: simulate the attack on the fetched rows, then aggregate robustly, or skip the update.

When files are lost (no majority, slow or lying holders), fewer than f rows may remain, and an aggregator's
precondition for the configured Byzantine count s (e.g. n >= 2s + 3 for krum, n >= 4s + 3 for bulyan) may fail. The
step then follows ``--short-step``:

* ``skip`` (default): no update this step. Sound whatever the adversary did: a skipped step leaves the parameters and
  momentum unchanged, so no Byzantine value enters them. Lowering s is not sound in general, because a file needs r'
  Byzantine holders to be corrupted whether or not other holders were erased, so up to c_max(q) of the remaining rows
  may still be corrupted. One exception is sound and always applied first: a dropped file whose r holders all
  replied and disagreed provably had a Byzantine majority (:func:`shield_ps.phases.vote.provable_drops`), so it is one
  of the at most s files the adversary could have won; with p such files the survivors hold at most s - p corrupted
  rows, and the step aggregates with s - p (action ``lower-s``, reason "proven"). So q Byzantine co-holders that
  drop their own files instead of winning them cannot stop training.
* ``lower-s``: aggregate with the largest s the aggregator accepts for the rows left (the event says which s). Weaker:
  the guarantee holds only if at most that many rows are corrupted (e.g. files lost to honest erasures, no attack).

Centered clipping starts from the previous step's aggregate (Karimireddy, He and Jaggi, ICML 2021), which
:class:`Aggregation` keeps (and checkpoints) between steps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from byzantine.aggregators import Aggregator, aggregate
from byzantine.attacks import simulate_attack
from byzantine.errors import AggregationError
from shield_ps.config import ShortStep as ShortStep  # declared with its flag; re-exported for the step
from shield_ps.job import JobPlan
from shield_ps.phases.buffers import StepBuffers

log = logging.getLogger(__name__)


@dataclass
class AggregationOutcome:
    """``gradient`` is None when the update is skipped; ``action`` is 'aggregate', 'lower-s' or 'skip'."""

    gradient: np.ndarray | None
    action: str
    s: int | None
    corrupted: tuple[int, ...] = ()
    attack_outvoted: set[int] = field(default_factory=set)
    reason: str | None = None
    simulated: bool = False  # the attack was simulated on the PS (``corrupted`` is then its count)


def _accepts(aggregator: Aggregator, n: int, kwargs: dict[str, Any]) -> bool:
    if n == 0:
        return False
    probe = np.random.default_rng(0).standard_normal((n, 2)).astype(np.float32)
    small: dict[str, Any] = {k: (np.zeros(2, dtype=np.float32) if k == "center" else v) for k, v in kwargs.items()}
    try:
        aggregate(aggregator, probe, **small)
    except AggregationError:
        return False
    return True


def largest_valid_s(aggregator: Aggregator, n: int, kwargs: dict[str, Any]) -> int | None:
    """The largest s <= kwargs['s'] for which ``aggregator`` accepts n rows (None if even s = 0 fails)."""
    for s in range(int(kwargs.get("s", 0)), -1, -1):
        if _accepts(aggregator, n, {**kwargs, "s": s}):
            return s
    return None


class Aggregation:
    """Runs the attack simulation and the aggregator over a step's rows; holds centered clipping's centre."""

    def __init__(self, plan: JobPlan, buffers: StepBuffers, policy: ShortStep) -> None:
        self.plan = plan
        self._buffers = buffers
        self.policy = policy
        clipping = plan.aggregator is Aggregator.CENTERED_CLIPPING
        self.center: np.ndarray | None = np.zeros(buffers.d, dtype=np.float32) if clipping else None
        self._next_center: np.ndarray | None = np.zeros(buffers.d, dtype=np.float32) if clipping else None

    def run(self, step: int, won: list[int], byzantine: tuple[int, ...], proven: int = 0) -> AggregationOutcome:
        """Blocking (run it in an executor): the rows of ``won`` files are aggregated (compacted in place). ``proven``:
        dropped files with a proven Byzantine majority (each lowers s by one when the aggregator needs it)."""
        plan = self.plan
        corrupted, attack_outvoted = self._simulate_attack(won, byzantine)
        simulated = plan.attack is not None
        kwargs = plan.aggregation_kwargs(step)
        if self.center is not None:
            kwargs["center"] = self.center
        action, s, reason = "aggregate", kwargs.get("s"), None
        if not _accepts(plan.aggregator, len(won), kwargs):
            sound = max(0, int(kwargs.get("s", 0)) - proven) if proven and "s" in kwargs else None
            if sound is not None and _accepts(plan.aggregator, len(won), {**kwargs, "s": sound}):
                lowered: int | None = sound
                reason = f"proven: {proven} dropped file(s) had a proven Byzantine majority, s {s} -> {sound}"
            elif self.policy is ShortStep.LOWER_S:
                lowered = largest_valid_s(plan.aggregator, len(won), kwargs)
            else:
                lowered = None
            if lowered is None:
                reason = (f"{len(won)} of {plan.placement.f} files survived and {plan.aggregator.value} cannot "
                          f"aggregate them with s={s}")
                return AggregationOutcome(None, "skip", s, corrupted, attack_outvoted, reason, simulated)
            action, s, kwargs["s"] = "lower-s", lowered, lowered
        gradient = aggregate(plan.aggregator, self._buffers.compact(won), check_finite_input=False, **kwargs)
        gradient = np.ascontiguousarray(gradient, dtype=np.float32)
        if self._next_center is not None:
            np.copyto(self._next_center, gradient)
        return AggregationOutcome(gradient, action, s, corrupted, attack_outvoted, reason, simulated)

    def commit(self) -> None:
        """The update of the step just aggregated was applied: its aggregate is the next centre."""
        if self.center is not None and self._next_center is not None:
            self.center, self._next_center = self._next_center, self.center

    def _simulate_attack(self, won: list[int], byzantine: tuple[int, ...]) -> tuple[tuple[int, ...], set[int]]:
        plan = self.plan
        if plan.attack is None or not byzantine or not won:
            return (), set()
        rows = self._buffers.rows
        lost = sorted(set(range(plan.placement.f)) - set(won))
        if lost:  # rows without a winner: stand-ins for the attack's statistics, excluded afterwards
            rows[lost] = rows[won].mean(axis=0)
        z: float | Literal["auto"] = "auto" if plan.config.alie_z == "auto" else float(plan.config.alie_z)
        result = simulate_attack(plan.attack, rows, plan.placement, byzantine, c=plan.config.attack_c, z=z,
                                 inplace=True)
        kept = set(won)
        return tuple(f for f in result.corrupted if f in kept), set(result.vote.disagreeing)
