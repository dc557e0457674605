"""The fetch phase: one verified payload per winning file, hedged across its holders, every attempt under a deadline.

A file's fetch starts as soon as its winner is known (the streaming vote, :mod:`shield_ps.collector`). Its holders
(the workers whose digest won) are asked in an order drawn from a secret the PS keeps for the run, so no agent can
know before it votes whether, or when, it will be asked. The first holder is asked; if it has not delivered within
the hedge delay, the next holder is asked as well, and so on; the first payload that hashes to the winning digest is
kept and the other attempts are cancelled. Each attempt is bounded from the request to the last payload byte by
``latency + bytes / min_bandwidth``. Every attempt lands in a spare vector borrowed from the step's buffers
(:class:`~shield_ps.phases.buffers.StepBuffers`) and the winner is copied into its file's row, so a loser whose payload
is already arriving is not cut off (which would close its connection, and with it the agent's other fetches): it
drains in the background, bounded by its own deadline, and its vector is lent again from the next step on.

Outcomes per holder: **lying** (its payload does not hash to the digest it voted, or it broke the protocol), **slow**
(it missed its deadline, or was overtaken by a hedge and did not deliver). An attempt cut at its deadline with its
payload half received closes that connection (the stream cannot resynchronise); one cancelled before any reply costs
nothing.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from shield_ps.phases.buffers import StepBuffers
from shield_ps.phases.deadlines import Deadlines
from shield_ps.pool import AgentLink
from wire import ConnectionClosed, Kind, RemoteError, WireError, WireTimeoutError
from wire.messages import FetchRequest

log = logging.getLogger(__name__)


def holder_order(secret: bytes, step: int, file: int, holders: tuple[int, ...]) -> list[int]:
    """``holders`` in the order the PS asks them at ``step``: sorted by a keyed hash the agents cannot compute."""
    def key(worker: int) -> bytes:
        return hashlib.blake2b(f"{step}:{file}:{worker}".encode(), key=secret, digest_size=16).digest()

    return sorted(holders, key=key)


def has_non_finite(row: np.ndarray, zeros: np.ndarray) -> bool:
    """True when ``row`` holds a NaN or an Inf: 0 * x is NaN exactly for those, and BLAS reads at memory speed
    (``zeros`` is a preallocated zero vector of the same length)."""
    return not np.isfinite(np.dot(row, zeros))



def _copy_into(dest: np.ndarray, src: np.ndarray) -> None:
    """``np.copyto(dest, src)``, for an executor."""
    np.copyto(dest, src)


def _committed(replies: Mapping[int, bytes], digest: bytes) -> tuple[int, ...]:
    """The workers whose reply in ``replies`` (one file's, worker -> digest) is ``digest``, ascending."""
    return tuple(sorted(w for w, d in replies.items() if d == digest))

@dataclass
class FetchReport:
    """What the fetches of one step found."""

    fetched: set[int] = field(default_factory=set)  # files whose verified payload is in its row
    payloads: set[tuple[int, bytes]] = field(default_factory=set)  # (file, digest) fetched into a caller's buffer
    invalid: set[bytes] = field(default_factory=set)  # winning digests whose payload is not finite
    lying: set[int] = field(default_factory=set)
    slow: set[int] = field(default_factory=set)
    attempts: int = 0
    hedges: int = 0
    codecs: dict[str, int] = field(default_factory=dict)  # codec -> payloads received (--codec auto)


#: A holder overtaken by a hedge that then did not deliver is asked after the other holders for this many steps
#: (it still serves when they fail): one that withholds or trickles its payloads costs a step one hedge delay, not
#: a hedge delay every step it would be asked first.
ASK_LAST_STEPS = 8
#: A receiving attempt keeps pace (is not hedged) at this share of the median rate of the payloads arriving.
_PACE = 0.5


class _Attempt:
    """One FETCH of one file from one holder, into ``dest``: a spare vector borrowed when its payload starts to
    arrive (a holder that never answers holds no memory), or the caller's (``own``: never given back here)."""

    def __init__(self, worker: int, dest: np.ndarray | None = None) -> None:
        self.worker, self.dest = worker, dest
        self.own = dest is not None  # the caller's buffer, not a borrowed spare
        self.task: asyncio.Task[bytes | None] | None = None
        self.started = time.monotonic()
        self.overtaken = False  # a hedge was sent because this one was not done in time
        self.receiving = False  # its payload has started to arrive
        self.received = 0  # bytes of it in place
        self.receiving_since = 0.0

    def rate(self, now: float) -> float:
        """Bytes per second of its payload so far (0 before it starts)."""
        return self.received / max(now - self.receiving_since, 1e-3) if self.receiving else 0.0


class Fetcher:
    """Runs the fetches of one step; ``buffers.row(file)`` receives each verified payload."""

    def __init__(self, buffers: StepBuffers, deadlines: Deadlines, secret: bytes,
                 link_of: Callable[[int], AgentLink | None],
                 on_violation: Callable[[AgentLink, str], None]) -> None:
        self._buffers = buffers
        self._d = buffers.d
        self._deadlines = deadlines
        self._secret = secret
        self._link_of = link_of
        self._violation = on_violation
        self._zeros = np.zeros(self._d, dtype=np.float32)
        self._draining: set[asyncio.Task[bytes | None]] = set()
        self._receiving: set[_Attempt] = set()  # attempts whose payload is arriving, any file
        self._tasks: dict[int | tuple[int, bytes], asyncio.Task[None]] = {}
        self.report = FetchReport()
        self.step = -1
        self.uplink_rates: dict[int, float] = {}  # worker -> bytes/s of its last payload, verified or overtaken
        self._ask_last: dict[int, int] = {}  # worker -> the step from which it is asked in its keyed turn again

    def begin(self, step: int) -> None:
        """Start a new step (the step's buffers have begun it: :meth:`StepBuffers.begin_step`)."""
        self.step = step
        self._tasks.clear()
        self.report = FetchReport()

    def start(self, file: int, digest: bytes, holders: Callable[[], tuple[int, ...]]) -> None:
        """Fetch ``file`` (winning ``digest``) in the background; ``holders()`` lists its holders of that digest now."""
        if file not in self._tasks:
            self._tasks[file] = asyncio.get_running_loop().create_task(self._fetch_file(file, digest, holders))

    def start_winner(self, file: int, digest: bytes, replies: Mapping[int, bytes]) -> None:
        """Fetch ``file``, won by ``digest``, from its holders that committed it: ``replies`` is the file's
        worker -> digest map of the step, read at each ask (holders that report later are asked too). The digest
        gather calls this as soon as r' holders agree (the streaming vote), the votes for every winner."""
        self.start(file, digest, functools.partial(_committed, replies, digest))

    def start_payload(self, file: int, digest: bytes, holders: Callable[[], tuple[int, ...]],
                      dest: np.ndarray) -> asyncio.Task[None]:
        """Fetch the payload of ``digest`` for ``file`` into ``dest`` (not the file's row), hedged among ``holders()``
        like a winner's; ``report.payloads`` gets ``(file, digest)`` once it is in and verified. The split files of
        the sketch vote fetch one payload per digest of their agreeing group this way."""
        key = (file, digest)
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = asyncio.get_running_loop().create_task(
                self._fetch_file(file, digest, holders, dest))
        return task

    def forget(self, file: int) -> None:
        """Allow ``file`` to be fetched again this step (its previous fetch has finished: the auto vote moves to
        another holder's digest after a proven lie)."""
        task = self._tasks.get(file)
        if task is not None and task.done():
            del self._tasks[file]

    async def finish(self) -> FetchReport:
        """Wait for every fetch started this step (each bounded by its hedges and deadlines)."""
        results = await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        for file, result in zip(self._tasks, results, strict=False):
            # an exception is a bug of ours: that file is lost for the step, the run goes on
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("step %d: fetching file %d failed: %r", self.step, file, result)
        return self.report

    async def cancel(self) -> None:
        """Cancel the step's fetches; payloads still draining are let finish (each bounded by its own deadline),
        so closing the PS does not cut a healthy connection mid-frame."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._draining, return_exceptions=True)

    # ---- one file ---------------------------------------------------------------------------------------------
    async def _fetch_file(self, file: int, digest: bytes, holders: Callable[[], tuple[int, ...]],
                          dest: np.ndarray | None = None) -> None:
        step, report = self.step, self.report
        asked: list[int] = []
        running: list[_Attempt] = []
        nbytes = self._d * 4
        try:
            while True:
                if not running:
                    worker = self._next_holder(step, file, holders(), asked)
                    if worker is None:
                        return
                    running.append(self._launch(file, worker, first=not asked))
                    asked.append(worker)
                pending = self._next_holder(step, file, holders(), asked) is not None
                delay = self._deadlines.hedge_delay(nbytes) if pending else None
                done, _ = await asyncio.wait([a.task for a in running if a.task is not None], timeout=delay,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done and self._keeping_pace(running):
                    continue  # its payload flows as fast as the others': a hedge would only share the same ingress
                if not done:  # hedge: ask the next holder too
                    for attempt in running:
                        attempt.overtaken = True
                        self.uplink_rates[attempt.worker] = attempt.rate(time.monotonic())
                    worker = self._next_holder(step, file, holders(), asked)
                    assert worker is not None
                    running.append(self._launch(file, worker, first=False))
                    asked.append(worker)
                    report.hedges += 1
                    continue
                for attempt in [a for a in running if a.task in done]:
                    running.remove(attempt)
                    if self._judge(attempt, digest):
                        await self._cancel_losers(running)  # before the row is written: a loser may write into it
                        running.clear()
                        await self._accept(file, attempt, digest, dest)
                        return
        finally:
            await self._cancel_losers(running)

    def _keeping_pace(self, running: list[_Attempt]) -> bool:
        """True when every running attempt's payload is arriving at least half as fast as the median payload now
        arriving: the PS's own ingress, shared by every fetch of the step, is what makes them slow, not the holder
        (a holder that has not started its payload, or trickles it, is not keeping pace)."""
        now = time.monotonic()
        rates = sorted(a.rate(now) for a in self._receiving)
        if not rates:
            return False
        typical = rates[len(rates) // 2]  # 0 while no payload has a whole chunk in: no evidence, hedge as usual
        return typical > 0 and all(a.receiving and a.rate(now) >= _PACE * typical for a in running)

    def _next_holder(self, step: int, file: int, holders: tuple[int, ...], asked: list[int]) -> int | None:
        order = holder_order(self._secret, step, file, holders)
        order.sort(key=lambda w: step < self._ask_last.get(w, 0))  # stable: the keyed order within each part
        for worker in order:
            if worker not in asked and self._link_of(worker) is not None:
                return worker
        return None

    def _launch(self, file: int, worker: int, *, first: bool) -> _Attempt:
        """Start one attempt (its spare buffer comes with its payload)."""
        attempt = _Attempt(worker)
        link = self._link_of(worker)
        assert link is not None
        attempt.task = asyncio.get_running_loop().create_task(self._attempt(link, file, attempt))
        self.report.attempts += 1
        return attempt

    async def fetch_replica(self, link: AgentLink, file: int, dest: np.ndarray) -> bytes | None:
        """One bounded FETCH of ``file`` from ``link`` into ``dest`` (the tolerant vote fetches every replica)."""
        self.report.attempts += 1
        return await self._attempt(link, file, _Attempt(link.worker, dest))

    async def _attempt(self, link: AgentLink, file: int, attempt: _Attempt) -> bytes | None:
        budget = self._deadlines.transfer(self._d * 4)
        try:
            return await asyncio.wait_for(self._fetch_into(link, file, attempt), budget)
        except asyncio.TimeoutError:
            log.warning("step %d: worker %d did not deliver file %d within %.1fs: cut off", self.step, link.worker,
                        file, budget)
            self.report.slow.add(link.worker)
            return None

    async def _fetch_into(self, link: AgentLink, file: int, attempt: _Attempt) -> bytes | None:
        """FETCH ``file`` from ``link`` into the attempt's buffer; the payload's digest, or None if none came."""
        try:
            msg = await link.conn.request(Kind.FETCH, FetchRequest(self.step, file).header(), timeout=None)
        except (RemoteError, WireTimeoutError, ConnectionClosed, WireError) as exc:
            log.info("step %d: worker %d did not deliver file %d: %s", self.step, link.worker, file, exc)
            return None
        if msg.kind is not Kind.VECTOR or msg.vector is None or msg.vector.n != self._d:
            msg.discard()
            self.report.lying.add(link.worker)
            self._violation(link, f"FETCH answered with {msg.kind.value} of the wrong shape")
            return None
        codec = msg.vector.codec.value
        self.report.codecs[codec] = self.report.codecs.get(codec, 0) + 1
        if attempt.dest is None:
            attempt.dest = self._buffers.borrow()
        attempt.receiving, attempt.receiving_since = True, time.monotonic()
        self._receiving.add(attempt)
        try:
            return await msg.read_vector_into(attempt.dest, progress=lambda nbytes: setattr(attempt, "received",
                                                                                             nbytes))
        except ConnectionClosed as exc:  # closed under this read (e.g. a sibling read was cancelled): lost, not lying
            log.info("step %d: worker %d's connection closed during file %d: %s", self.step, link.worker, file, exc)
            return None
        except WireError as exc:
            self.report.lying.add(link.worker)
            self._violation(link, f"bad VECTOR payload: {exc}")
            return None
        finally:
            self._receiving.discard(attempt)

    def _judge(self, attempt: _Attempt, digest: bytes) -> bool:
        """True when the attempt delivered the winning payload; otherwise records why not (the caller moves on)."""
        assert attempt.task is not None
        got = attempt.task.result()
        if got == digest:
            self._deadlines.record_fetch(time.monotonic() - attempt.started)
            self.uplink_rates[attempt.worker] = attempt.rate(time.monotonic())
            return True
        if got is None:
            if attempt.overtaken:
                self._overtaken_loser(attempt.worker)
        else:
            log.warning("step %d: worker %d's payload does not match the digest it voted", self.step, attempt.worker)
            self.report.lying.add(attempt.worker)
        self._release(attempt)
        return False

    async def _accept(self, file: int, attempt: _Attempt, digest: bytes, dest: np.ndarray | None) -> None:
        loop = asyncio.get_running_loop()
        row = self._buffers.row(file) if dest is None else dest
        await loop.run_in_executor(None, _copy_into, row, cast(np.ndarray, attempt.dest))  # accepted: it has one
        self._release(attempt)
        if await loop.run_in_executor(None, has_non_finite, row, self._zeros):
            log.warning("step %d: the winning payload of file %d is not finite: file dropped", self.step, file)
            self.report.invalid.add(digest)
            return
        if dest is None:
            self.report.fetched.add(file)
        else:
            self.report.payloads.add((file, digest))

    async def _cancel_losers(self, running: list[_Attempt]) -> None:
        """Cancel the attempts not needed any more; one whose payload is arriving drains in the background instead
        (bounded by its own deadline), so its connection and the agent's other fetches survive."""
        waiting = []
        for attempt in running:
            assert attempt.task is not None
            if attempt.overtaken:
                self._overtaken_loser(attempt.worker)
            if attempt.receiving and not attempt.task.done():
                self._draining.add(attempt.task)
                attempt.task.add_done_callback(  # receiving: it has its buffer
                    functools.partial(self._drained, dest=cast(np.ndarray, attempt.dest)))
            else:
                attempt.task.cancel()
                waiting.append(attempt)
        for attempt in waiting:
            try:
                await attempt.task  # type: ignore[misc]
            except asyncio.CancelledError:
                pass
            if attempt.dest is not None and not attempt.own:  # a cancelled decode may still write into it this step
                self._buffers.quarantine(attempt.dest)

    def _overtaken_loser(self, worker: int) -> None:
        """A hedge overtook ``worker`` and it did not deliver: ``slow``, and asked last for ASK_LAST_STEPS steps."""
        self.report.slow.add(worker)
        self._ask_last[worker] = self.step + 1 + ASK_LAST_STEPS

    def _drained(self, task: asyncio.Task[bytes | None], dest: np.ndarray) -> None:
        self._draining.discard(task)
        self._buffers.quarantine(dest)

    def _release(self, attempt: _Attempt) -> None:
        """A finished attempt's spare vector is free again."""
        if attempt.dest is not None and not attempt.own:
            self._buffers.give_back(attempt.dest)
