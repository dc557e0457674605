"""Proven liars leave: a worker proven ``lying`` sits out a number of steps that doubles with each conviction.

A conviction needs proof the PS holds itself: a payload that does not hash to its sender's own digest, a payload
whose recomputed sketch differs from the sketch its holder sent, a finite sketch of a non-finite payload, or a
protocol violation. Each conviction excludes the worker from the next ``FIRST_EXCLUSION_STEPS * 2**(n-1)`` steps
(n = its convictions so far, at most ``MAX_EXCLUSION_STEPS``): it is sent no STEP, so its slot's files are erasures,
as if it were absent, and the PS spends nothing on it. Nothing it says can convict anyone else. Operational state:
not checkpointed (a restarted PS forgets it).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: Steps a first conviction excludes a worker.
FIRST_EXCLUSION_STEPS = 8
#: The longest exclusion, steps.
MAX_EXCLUSION_STEPS = 1024


@dataclass
class Exclusions:
    """Convictions and exclusions over the run."""

    until: dict[int, int] = field(default_factory=dict)  # worker -> first step it takes part in again
    convictions: dict[int, int] = field(default_factory=dict)
    _convicted_at: dict[int, int] = field(default_factory=dict)  # worker -> the step of its last conviction

    def convict(self, step: int, workers: Iterable[int]) -> None:
        """``workers`` were proven to lie at ``step`` (once per worker and step, however many proofs)."""
        for worker in workers:
            if self._convicted_at.get(worker) == step:
                continue
            self._convicted_at[worker] = step
            n = self.convictions[worker] = self.convictions.get(worker, 0) + 1
            steps = min(MAX_EXCLUSION_STEPS, FIRST_EXCLUSION_STEPS << min(n - 1, 16))
            self.until[worker] = max(self.until.get(worker, 0), step + 1 + steps)

    def excluded(self, step: int) -> frozenset[int]:
        """The workers that sit out ``step``."""
        return frozenset(w for w, until in self.until.items() if self._convicted_at[w] < step < until)
