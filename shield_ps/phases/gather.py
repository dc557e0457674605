"""The gather phase: every expected digest until the gather deadline, or a straggler grace after every file has its
winner (a late reply can no longer change a winner), and never past the deadline.

A worker that is still waiting for its parameters on the relay tree, or that was just sent them after its relay
failed it, is *protected*: the grace is stretched to the end of its protection (:meth:`RelayRound.protected_until
<shield_ps.phases.relay_round.RelayRound.protected_until>`), so an honest child of a stalling relay is not erased for
the relay's fault. The workers still missing at the end are late: erased for the step and reported slow.

The digests come in through :class:`DigestIntake`, wired at construction to what they feed: each DIGESTS message is
checked and recorded by the step's :class:`~shield_ps.collector.StepCollector`, and as soon as a file has r' equal
digests (the streaming vote) its fetch starts (:meth:`Fetcher.start_winner
<shield_ps.phases.fetch.Fetcher.start_winner>`), so a gradient goes from the connection to the fetch without passing
through the step.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

from shield_ps.collector import DigestRejected, StepCollector
from shield_ps.events import WorkerState
from shield_ps.phases.deadlines import Deadlines, Unwaited
from shield_ps.phases.fetch import Fetcher
from shield_ps.pool import AgentLink, WorkerPool

log = logging.getLogger(__name__)


#: Steps whose typical digest time the straggler grace remembers.
RECENT_STEPS = 8


class DigestIntake:
    """Where the agents' digests enter: one step's collector at a time, from before the broadcast to the end of the
    gather. ``stream_to``: the fetcher that fetches each file as soon as its winner is known (None: no streaming
    vote, as with ``--vote tolerant``, which fetches every replica after the gather)."""

    def __init__(self, num_files: int, r_prime: int, pool: WorkerPool,
                 on_violation: Callable[[AgentLink, str], None], *, stream_to: Fetcher | None) -> None:
        self._num_files, self._r_prime = num_files, r_prime
        self._pool, self._violation, self._stream_to = pool, on_violation, stream_to
        self.collector: StepCollector | None = None  # the step's, while its digests are taken

    def open(self, step: int, links: list[AgentLink]) -> StepCollector:
        """Take ``step``'s digests from ``links`` (each owes those of its files) until :meth:`close`."""
        self.collector = StepCollector(step, self._num_files, {link.worker: link.files for link in links},
                                       r_prime=self._r_prime, on_winner=self._on_winner)
        return self.collector

    def close(self) -> None:
        """Digests that come from now on are ignored (the gather is over, or the run is closing)."""
        self.collector = None

    def on_digest(self, link: AgentLink, header: dict[str, Any]) -> None:
        """One DIGESTS message from ``link`` (its connection task calls this); a malformed one drops the agent."""
        collector = self.collector
        if collector is None:
            return
        try:
            recorded = collector.add(link.worker, header)
        except DigestRejected as exc:
            self._violation(link, str(exc))
            return
        if recorded and collector.worker_done(link.worker):
            self._pool.set_state(link, WorkerState.DONE, compute_s=collector.compute_s.get(link.worker))

    def on_sent(self, link: AgentLink) -> None:
        """The broadcast handed ``link`` its parameters: it computes, unless its digests are all in already."""
        if self.collector is not None and not self.collector.worker_done(link.worker):
            self._pool.set_state(link, WorkerState.COMPUTING)

    def drop_worker(self, worker: int) -> None:
        """``worker`` is gone (its agent was lost, or its STEP could not be sent): the gather stops waiting for it."""
        if self.collector is not None:
            self.collector.drop_worker(worker)

    def _on_winner(self, file: int, digest: bytes, holders: tuple[int, ...]) -> None:
        """The streaming vote: ``digest`` has r' holders, so it has won ``file``: fetch it now."""
        if self.collector is not None and self._stream_to is not None:
            self._stream_to.start_winner(file, digest, self.collector.replies[file])


class Gather:
    """Waits for one step's digests; :meth:`changed` wakes it when a protection moved (a relay complaint).

    The gather waits for every digest, but only until each file can be voted on what is in, then a grace:

    - every file has its winner: the straggler grace (:meth:`Deadlines.digest_grace`, a share of the typical digest
      time: a late digest can no longer change a winner), or only its floor once every worker still missing is one
      not waited for (below);
    - every file without a winner has r' digests in (the sketch vote can decide it on those), but a worker still owes
      one: the hedge-like :meth:`Deadlines.straggler_grace` over the typical digest time, since the missing digest
      may still give the file an exact winner. A worker late past it is erased and, for the next
      :data:`UNWAITED_STEPS` steps, is given only the short digest grace (a file that only it still owes counts as
      votable at once): one agent that withholds its digests where its two co-holders disagree (two determinism
      classes) costs one such grace in ``UNWAITED_STEPS + 1`` steps, not the gather deadline every step. The window
      does not grow, so an honest worker on a slower machine is waited for again after it.

    The typical digest time is the fastest median of the last ``RECENT_STEPS`` steps, this one included: a step that
    one agent slowed (the children of a relay that stalled got their parameters late, so the median moved) does not
    stretch its own grace or the next steps', which let one silent relay cost a later step 20 s."""

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        self._changed = asyncio.Event()
        self._typical: collections.deque[float] = collections.deque(maxlen=RECENT_STEPS)
        self._unwaited = Unwaited()  # late workers: only the short digest grace for a while
        self.held: set[int] = set()  # the last run's workers that held a file without a winner past the short grace

    def _typical_now(self, finish_times: list[float]) -> float:
        """The typical digest time, this step's median (once, when the first grace starts) included."""
        if finish_times:
            self._typical.append(statistics.median(finish_times))
        return min(self._typical) if self._typical else 0.0

    def changed(self) -> None:
        self._changed.set()

    def unwaited(self, step: int) -> set[int]:
        """The workers given only the short digest grace at ``step`` (late in one of the last UNWAITED_STEPS)."""
        return self._unwaited.at(step)

    async def run(self, step: int, collector: StepCollector,
                  protected_until: Callable[[int, float], float | None],
                  complained: Callable[[int], bool] = lambda worker: False) -> set[int]:
        """Returns the late workers. ``protected_until``: the relay protection of a worker (:class:`RelayRound
        <shield_ps.phases.relay_round.RelayRound>`); none for a worker not waited for this step. A protected worker
        that did not complain of its relay and delivered after the grace held the step under a protection it did not
        need (it had its parameters): it is ``held`` and not waited for in the next UNWAITED_STEPS steps."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadlines.gather
        cooled = self.unwaited(step)
        self.held = set()
        def protection(worker: int, allowance: float) -> float | None:
            return None if worker in cooled else protected_until(worker, allowance)

        grace_over = math.inf  # monotonic time the last grace ended, before any protection stretched it
        complete = loop.create_task(collector.complete.wait())
        decided = loop.create_task(collector.all_decided.wait())
        try:
            await self._until_votable(collector, cooled, {complete, decided}, deadline)
            if not complete.done():
                typical = self._typical_now(collector.finish_times)
                grace = self._deadlines.digest_grace(typical)
                # a worker that complained of its relay computes after the PS's direct send: a typical digest time
                allowance = grace + typical
                grace_start = loop.time()
                if not decided.done() and collector.waiting_on(cooled):
                    await self._wait_undecided(step, collector, cooled, {complete, decided}, typical, deadline,
                                               allowance, protection)
                    if decided.done():  # the missing digest gave the last file its winner: a grace from now
                        grace_start = loop.time()
                grace_over = grace_start + grace - loop.time() + time.monotonic()
                await self._wait_grace(collector, {complete}, self._grace_end(collector, cooled, grace_start, grace),
                                       deadline, allowance, protection)
        finally:
            complete.cancel()
            decided.cancel()
        late = set(collector.missing_workers())
        if late:
            log.warning("step %d: workers %s had not sent their digests in %.1fs: erased for this step", step,
                        sorted(late), loop.time() - deadline + self._deadlines.gather)
        for worker in late:
            self._unwaited.note(worker, step)
        for worker, finished in collector.finished_at.items():
            if finished > grace_over and not complained(worker) and worker not in self.held:
                self.held.add(worker)
                self._unwaited.note(worker, step)
        return late

    def _grace_end(self, collector: StepCollector, cooled: set[int], start: float,
                   grace: float) -> Callable[[], float]:
        """When the grace that began at ``start`` ends: after ``grace``, or after only the digest grace's floor once
        every worker still missing is one not waited for (late in one of the last UNWAITED_STEPS steps). A worker
        that stays silent, or that reads its STEP slowly every step, so costs each step the floor rather than a share
        of the typical digest time: that share was up to half a step where computing a gradient is most of one."""
        floor = self._deadlines.digest_grace_floor

        def end() -> float:
            return start + (floor if set(collector.missing_workers()) <= cooled else grace)
        return end

    async def _wait_undecided(self, step: int, collector: StepCollector, cooled: set[int],
                              stop: set[asyncio.Task[bool]], typical: float, deadline: float, allowance: float,
                              protected_until: Callable[[int, float], float | None]) -> None:
        """Every file can be voted, but some file without a winner is still owed a digest that may give it one: wait
        the hedge-like straggler grace for it (an honest straggler keeps the run a function of its seed), until no
        worker outside ``cooled`` owes such a file. A worker that held the step past the short digest grace, or never
        came, is given only that grace for the next UNWAITED_STEPS steps (one that came is in :attr:`held`, reported
        ``slow``): an agent that delays its digests to just under the straggler grace costs one in
        UNWAITED_STEPS + 1 steps."""
        loop = asyncio.get_running_loop()
        holding = collector.waiting_on(cooled)
        short = self._deadlines.digest_grace(typical)
        short_end = time.monotonic() + short
        undecided = max(short, self._deadlines.straggler_grace([typical]))
        undecided_end = loop.time() + undecided
        await self._wait_grace(collector, stop, lambda: undecided_end, deadline, allowance, protected_until,
                               enough=lambda: not collector.waiting_on(cooled))
        for worker in holding:
            finished = collector.finished_at.get(worker, math.inf)
            if finished > short_end:
                self._unwaited.note(worker, step)
                if finished < math.inf:
                    self.held.add(worker)

    @staticmethod
    async def _until_votable(collector: StepCollector, cooled: set[int], stop: set[asyncio.Task[bool]],
                             deadline: float) -> None:
        """Until a task of ``stop`` is done, or every file can be voted on the digests in, or ``deadline``."""
        loop = asyncio.get_running_loop()
        while not any(task.done() for task in stop) and collector.undecided_owing(cooled):
            collector.digest_in.clear()
            arrived = loop.create_task(collector.digest_in.wait())
            try:
                done, _ = await asyncio.wait({*stop, arrived}, timeout=max(0.0, deadline - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrived.cancel()
            if not done:
                return

    async def _wait_grace(self, collector: StepCollector, stop: set[asyncio.Task[bool]], grace_end: Callable[[], float],
                          deadline: float, allowance: float,
                          protected_until: Callable[[int, float], float | None],
                          enough: Callable[[], bool] | None = None) -> None:
        """Until a task of ``stop`` is done, or ``enough()`` holds, or the later of ``grace_end()`` and the protection
        of each worker still missing (taken again whenever a protection moves or a worker finishes: a protected
        worker that has since sent its digests no longer holds the step)."""
        loop = asyncio.get_running_loop()
        offset = loop.time() - time.monotonic()
        while enough is None or not enough():
            self._changed.clear()
            collector.worker_finished.clear()
            ends = [grace_end()]
            for worker in collector.missing_workers():
                until = protected_until(worker, allowance)
                if until is not None:
                    ends.append(until + offset)
            end = min(max(ends), deadline)
            wakes = {loop.create_task(self._changed.wait()), loop.create_task(collector.worker_finished.wait())}
            try:
                done, _ = await asyncio.wait({*stop, *wakes}, timeout=max(0.0, end - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in wakes:
                    task.cancel()
            if done & stop or not done:
                return
