"""Who did what in a step, in five categories that are never mixed, and the run's running totals.

* ``lying``: proven to misbehave: a payload that does not hash to the sender's own digest, or a protocol violation.
* ``outvoted``: the worker's digest lost a vote (or, in a simulated attack, its rewritten value did). An honest
  worker outvoted in a file the adversary won is here, never among the liars.
* ``slow``: missed a deadline (the STEP send, the gather, a fetch or its hedge delay).
* ``erased``: sent none of its replies for the step: not connected, lost mid-step, skipped or late.
* ``relay``: another agent took the step's parameters from its process and got nothing valid in time (corrupt or
  withheld; unproven: the PS did not see those bytes, see :mod:`shield_ps.phases.relay`).

:class:`Tally` keeps the per-worker counts and the run's totals; it is saved in checkpoints, so a resumed run goes on
counting from there.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from byzantine.groups import could_bias
from shield_ps.phases.vote import VoteOutcome

CATEGORIES = ("lying", "outvoted", "slow", "erased", "relay")
TOTALS = ("files_corrupted", "files_dropped", "steps_skipped", "steps_lowered_s")


@dataclass
class StepAccount:
    """The categories of one step (sorted worker ids)."""

    lying: list[int] = field(default_factory=list)
    outvoted: list[int] = field(default_factory=list)
    slow: list[int] = field(default_factory=list)
    erased: list[int] = field(default_factory=list)
    relay: list[int] = field(default_factory=list)

    @classmethod
    def build(cls, *, lying: set[int], outvoted: set[int], slow: set[int], erased: set[int],
              relay: set[int] = frozenset()) -> StepAccount:  # type: ignore[assignment]
        return cls(lying=sorted(lying), outvoted=sorted(outvoted - lying), slow=sorted(slow), erased=sorted(erased),
                   relay=sorted(relay))

    def fields(self) -> dict[str, list[int]]:
        return {name: list(getattr(self, name)) for name in CATEGORIES}


def real_corruption(outcome: VoteOutcome, replies: Sequence[Mapping[int, bytes]], byzantine: set[int],
                    simulated: bool) -> set[int]:
    """Files whose row a (known) Byzantine worker on the wire could have set: an exact winner every holder of whose
    digest is Byzantine, or a group median at least half of whose inputs are Byzantine payloads."""
    if simulated or not byzantine:
        return set()
    out = set()
    for file in outcome.won:
        used = outcome.used.get(file)
        if used is not None:
            if could_bias([w for _, w in used], [all(h in byzantine for h in holders) for holders, _ in used]):
                out.add(file)
            continue
        holders = outcome.vote.files[file].holders
        winner = outcome.vote.files[file].winner
        committed = [w for w in holders if replies[file].get(w) == winner] if winner is not None else []
        if committed and all(w in byzantine for w in committed):
            out.add(file)
    return out


def honest_loss(losses: Mapping[int, list[float]], exclude: set[int]) -> float | None:
    """The mean of the losses the workers not in ``exclude`` reported (None when there are none)."""
    values = [loss for worker, reported in losses.items() if worker not in exclude for loss in reported]
    return float(np.mean(values)) if values else None


@dataclass
class Tally:
    """Per-worker counts by category and the run's totals (continues across ``--resume``)."""

    workers: dict[str, dict[int, int]] = field(default_factory=lambda: {name: {} for name in CATEGORIES})
    totals: dict[str, int] = field(default_factory=lambda: {name: 0 for name in TOTALS})

    def add(self, account: StepAccount, *, files_corrupted: int, files_dropped: int, action: str) -> None:
        for name in CATEGORIES:
            counts = self.workers[name]
            for worker in getattr(account, name):
                counts[worker] = counts.get(worker, 0) + 1
        self.totals["files_corrupted"] += files_corrupted
        self.totals["files_dropped"] += files_dropped
        self.totals["steps_skipped"] += action == "skip"
        self.totals["steps_lowered_s"] += action == "lower-s"

    def summary_fields(self) -> dict[str, Any]:
        """The summary's totals and, per category, worker -> count (JSON object keys are strings)."""
        flagged = sorted(set(self.workers["lying"]) | set(self.workers["outvoted"]))  # kept for old scripts
        return {**self.totals, **{f"{name}_workers": {str(w): n for w, n in sorted(counts.items())}
                                  for name, counts in self.workers.items()}, "flagged_workers": flagged}

    def to_json(self) -> dict[str, Any]:
        return {"workers": {name: {str(w): n for w, n in counts.items()} for name, counts in self.workers.items()},
                "totals": dict(self.totals)}

    @classmethod
    def from_json(cls, data: Any) -> Tally:
        """A tally from a checkpoint (an empty one for checkpoints written before tallies existed)."""
        tally = cls()
        if not isinstance(data, dict):
            return tally
        for name in CATEGORIES:
            counts = data.get("workers", {}).get(name, {})
            tally.workers[name] = {int(w): int(n) for w, n in counts.items()}
        for name in TOTALS:
            tally.totals[name] = int(data.get("totals", {}).get(name, 0))
        return tally
