"""The gather phase: every expected digest until the gather deadline, or a straggler grace after every file has its
winner (a late reply can no longer change a winner), and never past the deadline.

A worker that is still waiting for its parameters on the relay tree, or that was just sent them after its relay
failed it, is *protected*: the grace is stretched to the end of its protection (:meth:`RelayRound.protected_until
<shield_ps.phases.relay_round.RelayRound.protected_until>`), so an honest child of a stalling relay is not erased for
the relay's fault. The workers still missing at the end are late: erased for the step and reported slow.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import statistics
import time
from collections.abc import Callable

from shield_ps.collector import StepCollector
from shield_ps.phases.deadlines import Deadlines

log = logging.getLogger(__name__)


#: Steps whose typical digest time the straggler grace remembers.
RECENT_STEPS = 8


class Gather:
    """Waits for one step's digests; :meth:`changed` wakes it when a protection moved (a relay complaint).

    The straggler grace (:meth:`Deadlines.digest_grace`) is taken from the fastest typical (median) digest time of
    the last ``RECENT_STEPS`` steps, this one included: a step that one agent slowed (the children of a relay that
    stalled got their parameters late, so the median moved) does not stretch its own grace or the next steps', which
    let one silent relay cost a later step 20 s."""

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self._changed = asyncio.Event()
        self._typical: collections.deque[float] = collections.deque(maxlen=RECENT_STEPS)

    def _grace(self, finish_times: list[float]) -> float:
        if finish_times:
            self._typical.append(statistics.median(finish_times))
        return self._deadlines.digest_grace(min(self._typical) if self._typical else 0.0)

    def changed(self) -> None:
        self._changed.set()

    async def run(self, step: int, collector: StepCollector,
                  protected_until: Callable[[int, float], float | None]) -> set[int]:
        """Returns the late workers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadlines.gather
        complete = loop.create_task(collector.complete.wait())
        decided = loop.create_task(collector.all_decided.wait())
        try:
            done, _ = await asyncio.wait({complete, decided}, timeout=self._deadlines.gather,
                                         return_when=asyncio.FIRST_COMPLETED)
            if decided in done and complete not in done:
                grace = self._grace(collector.finish_times)
                await self._wait_grace(collector, complete, loop.time() + grace, deadline, grace, protected_until)
        finally:
            complete.cancel()
            decided.cancel()
        late = set(collector.missing_workers())
        if late:
            log.warning("step %d: workers %s had not sent their digests in %.1fs: erased for this step", step,
                        sorted(late), loop.time() - deadline + self._deadlines.gather)
        return late

    async def _wait_grace(self, collector: StepCollector, complete: asyncio.Task[bool], grace_end: float,
                          deadline: float, grace: float,
                          protected_until: Callable[[int, float], float | None]) -> None:
        """Until every digest is in, or the later of ``grace_end`` and the protection of each worker still missing
        (taken again whenever a protection moves or a worker finishes: a protected worker that has since sent its
        digests no longer holds the step)."""
        loop = asyncio.get_running_loop()
        offset = loop.time() - time.monotonic()
        while True:
            self._changed.clear()
            collector.worker_finished.clear()
            ends = [grace_end]
            for worker in collector.missing_workers():
                until = protected_until(worker, grace)
                if until is not None:
                    ends.append(until + offset)
            end = min(max(ends), deadline)
            wakes = {loop.create_task(self._changed.wait()), loop.create_task(collector.worker_finished.wait())}
            try:
                done, _ = await asyncio.wait({complete, *wakes}, timeout=max(0.0, end - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in wakes:
                    task.cancel()
            if complete in done or not done:
                return
