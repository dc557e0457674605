"""The named deadlines of one step, derived from the configuration (docs/liveness.md lists each one).

A transfer (the STEP broadcast to one agent, one FETCH from one holder) is bounded over its whole extent, from the
request to the last payload byte: ``latency + bytes / bandwidth``. ``bandwidth`` is ``--min-bandwidth`` where the
links are measured at least twice as fast; where they are slower it follows them (half the median rate the step's
recent transfers achieved: a shared PS ingress, a lossy WAN), and before anything is measured it is
``min_bandwidth / UNMEASURED_SLACK``, never less (docs/liveness.md). The gather ends at ``gather`` seconds, or
earlier once every file has its winner and the remaining workers had a straggler grace (``digest_grace``). A
hedge is sent to the next holder of a file when a fetch has not completed within
``max(hedge_floor, hedge_factor * median of recent fetch times)``.
"""
from __future__ import annotations

import collections
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from shield_ps.config import ServeConfig, default_of

#: Fetch durations remembered for the hedge delay (about two steps of a K = 35 cluster).
_HISTORY = 128
#: Until a transfer of its kind has been measured, a transfer is given time at min_bandwidth / UNMEASURED_SLACK (the
#: slowest rate any measurement can bring it to): the first step of a run on slow links must not cut every transfer
#: before the links are known. 1% loss and 80 ms RTT give one cubic TCP flow 1.6 MB/s on a quiet machine, and 25 of
#: them into one PS 0.5-1 MB/s each on the fleet bed's loaded one (a tenth of 10 MB/s still cut 2 honest files).
UNMEASURED_SLACK = 20.0
#: After every file has its winner, the gather waits this share of the typical digest time more for the rest.
STRAGGLER_SHARE = 0.5
#: A transfer is given time at this share of the median rate that recent transfers of its kind achieved.
_RATE_SHARE = 0.5
#: After a worker withheld what only it could give (a digest, a sketch, a payload), the steps it is not waited for
#: past the others.
UNWAITED_STEPS = 8


class Unwaited:
    """The workers not waited for past the others: each for ``UNWAITED_STEPS`` steps after it withheld what only
    it could give. One that withholds every step costs one grace in ``UNWAITED_STEPS + 1`` steps, not one a step;
    the window does not grow while it withholds in it, so an honest worker on a slower machine is waited for again
    after it (docs/liveness.md)."""

    def __init__(self) -> None:
        self._until: dict[int, int] = {}  # worker -> first step it is waited for again

    def note(self, worker: int, step: int) -> None:
        """``worker`` withheld something at ``step`` (nothing changes while it is already not waited for)."""
        if self._until.get(worker, 0) <= step:
            self._until[worker] = step + 1 + UNWAITED_STEPS

    def at(self, step: int) -> set[int]:
        """The workers not waited for at ``step``."""
        return {w for w, until in self._until.items() if until > step}


@dataclass
class Deadlines:
    """Seconds and bytes-per-second; ``fetch_times`` is the recent history the hedge delay is taken from."""

    gather: float
    latency: float
    min_bandwidth: float  # bytes per second
    hedge_factor: float
    hedge_floor: float
    relay_latency: float = default_of("relay_latency")
    digest_grace_floor: float = default_of("digest_grace_floor")
    fetch_times: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=_HISTORY))
    send_rates: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=_HISTORY))
    _seeded: bool = False

    @classmethod
    def from_config(cls, config: ServeConfig) -> Deadlines:
        """The deadlines of ``config``'s flags (``--min-bandwidth`` is in MB/s)."""
        return cls(gather=config.gather_timeout, latency=config.upload_timeout,
                   min_bandwidth=config.min_bandwidth * 1e6, hedge_factor=config.hedge_factor,
                   hedge_floor=config.hedge_floor, relay_latency=config.relay_latency,
                   digest_grace_floor=config.digest_grace_floor)

    def bandwidth(self, measured: float | None) -> float:
        """Bytes per second a transfer is given time at, from the median rate ``measured`` of recent transfers of
        its kind (None: none yet): between ``min_bandwidth / UNMEASURED_SLACK`` and ``min_bandwidth``."""
        slowest = self.min_bandwidth / UNMEASURED_SLACK
        if measured is None:
            return slowest
        return max(slowest, min(self.min_bandwidth, _RATE_SHARE * measured))

    def send_rate(self) -> float | None:
        """Median bytes per second of recent whole-vector STEP sends (None before one completed)."""
        return statistics.median(self.send_rates) if self.send_rates else None

    def fetch_rate(self, nbytes: int) -> float | None:
        """Median bytes per second of recent fetches of ``nbytes`` (every payload is one vector; None before a real
        fetch completed: the broadcast's seeds say nothing of a PS ingress shared by f fetches)."""
        if not self.fetch_times or self._seeded:
            return None
        return nbytes / max(statistics.median(self.fetch_times), 1e-6)

    def transfer(self, nbytes: int) -> float:
        """The whole-extent budget of one transfer of ``nbytes`` (a STEP send or a fetch: the longer of the two
        kinds' budgets, so that neither is cut for the other's pace)."""
        slowest = min(self.bandwidth(self.send_rate()), self.bandwidth(self.fetch_rate(nbytes)))
        return self.latency + nbytes / slowest

    def relay_hop(self, nbytes: int) -> float:
        """What one hop of the relay tree may take: a worker ``k`` hops from the PS waits ``k`` hops for the vector
        before asking the PS for it directly (at the pace of the PS's own STEP sends; at ``min_bandwidth`` before
        one was measured). A short wait costs only a direct send, so it is not stretched by the slack that keeps an
        unmeasured transfer from being cut: at min_bandwidth / 20 an honest child of a silent relay waited longer
        than a test's whole gather deadline in the first step."""
        measured = self.send_rate()
        rate = self.min_bandwidth if measured is None else self.bandwidth(measured)
        return self.relay_latency + nbytes / rate

    def hedge_delay(self, nbytes: int) -> float:
        """How long a fetch may run before the next holder is asked too (never past the transfer budget)."""
        typical = statistics.median(self.fetch_times) if self.fetch_times else 0.0
        return min(max(self.hedge_floor, self.hedge_factor * typical), self.transfer(nbytes))

    def straggler_grace(self, finish_times: Sequence[float]) -> float:
        """Once a sketch round is decidable, how much longer it waits for the remaining answers:
        ``max(hedge_floor, hedge_factor * median time the others took)``."""
        typical = statistics.median(finish_times) if finish_times else 0.0
        return max(self.hedge_floor, self.hedge_factor * typical)

    def digest_grace(self, typical: float) -> float:
        """Once every file has its winner, how much longer the gather waits for the workers still missing:
        ``max(digest_grace_floor, STRAGGLER_SHARE * typical)``. Their digests can no longer change a winner, so
        the wait only spares a worker a little slower than the rest a ``slow`` report; every worker pays it, every
        step that one agent stays silent, so it is a share of the typical time, not a multiple of it, and its floor
        is the event loop's scheduling noise (``--digest-grace-floor``), not the hedge floor."""
        return max(self.digest_grace_floor, STRAGGLER_SHARE * typical)

    def record_fetch(self, seconds: float) -> None:
        if self._seeded:  # real fetch times replace the broadcast's
            self.fetch_times.clear()
            self._seeded = False
        self.fetch_times.append(seconds)

    def seed(self, seconds: float, nbytes: int | None = None) -> None:
        """A STEP send of a whole vector (``nbytes`` on the wire) took ``seconds``: its rate paces later sends and
        relay hops; until the first fetch completes, the hedge delay is taken from such sends (the same bytes over
        the same links), not from the floor alone, so the first step does not hedge every fetch of a large vector
        on a busy link."""
        if nbytes is not None and seconds > 0:
            self.send_rates.append(nbytes / seconds)
        if not self.fetch_times or self._seeded:
            self._seeded = True
            self.fetch_times.append(seconds)

    def worst_fetch(self, nbytes: int, holders: int) -> float:
        """An upper bound on one file's fetch phase: each holder asked in turn after at most a transfer budget."""
        return max(1, holders) * self.transfer(nbytes)
