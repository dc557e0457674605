"""The named deadlines of one step, derived from the configuration (docs/liveness.md lists each one).

A transfer (the STEP broadcast to one agent, one FETCH from one holder) is bounded over its whole extent, from the
request to the last payload byte: ``latency + bytes / min_bandwidth``. The gather ends at ``gather`` seconds, or
earlier once every file has its winner and the remaining workers had a straggler grace. A hedge is sent to the next holder of a file
when a fetch has not completed within ``max(hedge_floor, hedge_factor * median of recent fetch times)``.
"""
from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field

#: Fetch durations remembered for the hedge delay (about two steps of a K = 35 cluster).
_HISTORY = 128


@dataclass
class Deadlines:
    """Seconds and bytes-per-second; ``fetch_times`` is the recent history the hedge delay is taken from."""

    gather: float
    latency: float
    min_bandwidth: float  # bytes per second
    hedge_factor: float
    hedge_floor: float
    relay_latency: float = 2.0
    fetch_times: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=_HISTORY))
    _seeded: bool = False

    @classmethod
    def from_config(cls, config: object) -> "Deadlines":
        def get(name: str) -> object:
            return getattr(config, name)

        return cls(gather=float(get("gather_timeout")), latency=float(get("upload_timeout")),
                   min_bandwidth=float(get("min_bandwidth")) * 1e6, hedge_factor=float(get("hedge_factor")),
                   hedge_floor=float(get("hedge_floor")), relay_latency=float(getattr(config, "relay_latency", 2.0)))

    def transfer(self, nbytes: int) -> float:
        """The whole-extent budget of one transfer of ``nbytes``."""
        return self.latency + nbytes / self.min_bandwidth

    def relay_hop(self, nbytes: int) -> float:
        """What one hop of the relay tree may take: a worker ``k`` hops from the PS waits ``k`` hops for the vector
        before asking the PS for it directly."""
        return self.relay_latency + nbytes / self.min_bandwidth

    def hedge_delay(self, nbytes: int) -> float:
        """How long a fetch may run before the next holder is asked too (never past the transfer budget)."""
        typical = statistics.median(self.fetch_times) if self.fetch_times else 0.0
        return min(max(self.hedge_floor, self.hedge_factor * typical), self.transfer(nbytes))

    def straggler_grace(self, finish_times: list[float]) -> float:
        """Once every file has its winner, how much longer the gather waits for the remaining workers:
        ``max(hedge_floor, hedge_factor * median time the others took)``."""
        typical = statistics.median(finish_times) if finish_times else 0.0
        return max(self.hedge_floor, self.hedge_factor * typical)

    def record_fetch(self, seconds: float) -> None:
        if self._seeded:  # real fetch times replace the broadcast's
            self.fetch_times.clear()
            self._seeded = False
        self.fetch_times.append(seconds)

    def seed(self, seconds: float) -> None:
        """A STEP send of a whole vector took ``seconds``: until the first fetch completes, the hedge delay is taken
        from such sends (the same bytes over the same links), not from the floor alone, so the first step does not
        hedge every fetch of a large vector on a busy link."""
        if not self.fetch_times or self._seeded:
            self._seeded = True
            self.fetch_times.append(seconds)

    def worst_fetch(self, nbytes: int, holders: int) -> float:
        """An upper bound on one file's fetch phase: each holder asked in turn after at most a transfer budget."""
        return max(1, holders) * self.transfer(nbytes)
