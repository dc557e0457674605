"""The sketch phase of ``--vote auto``: the commit-then-sketch round for files whose digests disagree.

Every digest of the step is in (each holder is committed to its payload) before the PS draws a fresh seed and sends
each holder of a disputed file one SKETCH naming its disputed files (:mod:`wire.sketch`). Answers are collected until
all are in, or until a straggler grace after the round is *decidable*, or until the phase's deadline: a missing answer
is an erasure for that file's sketch vote (its worker is reported), never a wait past the grace.

The round is decidable once the caller's ``decidable(answers)`` holds (the auto vote: every file that needs the
sketch vote has a group of r' agreeing answers; files that an exact r' majority of digests already decided never hold
the round up), or once more than half of the asked workers have answered everything; it is over at once when the
caller's ``settled(answers)`` holds (every answer its decision needs is in). Files whose sketches only decide blame
are asked for in a second SKETCH once the wait is over, so they do not compete for the agents' cores with the ones
waited for; lingering for them at the step's end times its grace from their own answers. The grace is the gather's
straggler grace over the answer times (``max(hedge_floor, hedge_factor x median answer time)``), so one agent that
never answers costs a step that grace, not the deadline. The deadline is
``latency + max(files x d / SKETCH_RATE, 2 x the step's compute phase)``: a loaded agent that needed long for its
gradients gets proportionally long for their sketches. A malformed answer drops the agent (protocol violation). The
vote itself and the check of fetched payloads are pure (:mod:`byzantine.sketch`); the round decides nothing
on its own.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from byzantine.sketch import SketchParams, SketchReply, new_seed
from shield_ps.phases.deadlines import Unwaited
from shield_ps.pool import AgentLink
from wire import ConnectionClosed, Kind, WireError
from wire.sketch import SketchHeaderError, SketchRequest, parse_sketch_answer

log = logging.getLogger(__name__)

#: Coordinates per second an agent is given to sketch (about 10x slower than measured on one loaded core).
SKETCH_RATE = 2e6


class SketchRound:
    """One step's sketch requests and answers (``answers[file][worker]``)."""

    def __init__(self, params: SketchParams, num_files: int, d: int, latency: float,
                 link_of: Callable[[int], AgentLink | None],
                 on_violation: Callable[[AgentLink, str], None],
                 grace: Callable[[Sequence[float]], float] = lambda times: 0.25) -> None:
        self.params = params
        self._f, self._d, self._latency = num_files, d, latency
        self._link_of, self._violation = link_of, on_violation
        self._grace = grace
        self.step = -1
        self.seed = b""
        self.answers: list[dict[int, SketchReply]] = [{} for _ in range(num_files)]
        self._expected: dict[int, set[int]] = {}
        self._pool: dict[int, set[int]] = {}  # worker -> files: more than half of these answered makes it ready
        self._answer_times: list[float] = []
        self._started = 0.0
        self._later: dict[int, set[int]] = {}  # the second SKETCH's workers -> files (blame only)
        self._later_times: list[float] = []  # seconds from the second SKETCH to each of its workers' last answer
        self._later_started = 0.0
        self._decidable: Callable[[list[dict[int, SketchReply]]], bool] | None = None
        self._settled: Callable[[list[dict[int, SketchReply]]], bool] | None = None
        self._done = asyncio.Event()
        self._enough = asyncio.Event()  # the answers the caller waits for are in (the rest may linger)
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()  # set on every answer
        self._deadline_at = 0.0  # monotonic time the round's deadline passes
        self.missing: dict[int, set[int]] = {}  # worker -> files it did not answer in time (last round)
        self._unwaited = Unwaited()  # workers that left a sketch unanswered: not waited for for a while
        self.bytes_requested = 0

    def deadline(self, files_per_worker: int, compute_s: float = 0.0) -> float:
        return self._latency + max(files_per_worker * self._d / SKETCH_RATE, 2.0 * compute_s)

    async def run(self, step: int, requests: dict[int, tuple[int, ...]], compute_s: float = 0.0, *,
                  decidable: Callable[[list[dict[int, SketchReply]]], bool] | None = None,
                  settled: Callable[[list[dict[int, SketchReply]]], bool] | None = None,
                  wait: bool = True, later: dict[int, tuple[int, ...]] | None = None) -> list[dict[int, SketchReply]]:
        """Reveal a fresh seed to the holders in ``requests`` (worker -> its disputed files) and collect their
        sketches until complete, or ``settled(answers)`` holds (every answer the caller's decision needs is in: the
        rest keep coming while the step goes on), or a grace after the round is decidable, or the deadline (with
        ``wait=False``: not at all); returns per file worker -> reply, which keeps filling with answers that arrive
        later, until :meth:`close`. ``later``: more files to sketch under the same seed, asked for only once the
        wait is over (they decide nothing the caller waits for, so they do not compete with it for the agents'
        cores); they count for :meth:`linger` and :meth:`close` like the others."""
        self.step, self.seed = step, new_seed()
        self.answers = [{} for _ in range(self._f)]
        first = {w: set(files) for w, files in requests.items() if files}
        self._expected = {w: set(files) for w, files in first.items()}
        for worker, files in (later or {}).items():
            if files:
                self._expected.setdefault(worker, set()).update(files)
        self._pool = first or {w: set(files) for w, files in self._expected.items()}  # the half-answered rule's
        self._answer_times, self._decidable = [], decidable
        self._later = {}
        self._settled = settled
        self._done, self._ready, self._enough = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._started = started = time.monotonic()
        self.missing = {}
        budget = self.deadline(max((len(f) for f in self._expected.values()), default=0), compute_s)
        self._deadline_at = started + budget
        await self._ask(requests)
        self._check_done()
        if wait:
            await self._wait(step, budget - (time.monotonic() - started))
        self._later = {w: set(files) for w, files in (later or {}).items() if files}
        self._later_times, self._later_started = [], time.monotonic()
        if later:
            await self._ask(later)
        return self.answers

    async def _ask(self, requests: dict[int, tuple[int, ...]]) -> None:
        """Send each worker still expected one SKETCH for its files of ``requests`` not answered yet."""
        sends = []
        for worker, files in sorted(requests.items()):
            link = self._link_of(worker)
            wanted = tuple(sorted(set(files) & self._expected.get(worker, set())))
            if link is None or not wanted:
                continue
            sends.append(self._send(link, SketchRequest(self.step, self.seed, wanted, self.params.rows,
                                                        self.params.width)))
        await asyncio.gather(*sends)

    async def linger(self, needed: Callable[[list[dict[int, SketchReply]]], set[int]] | None = None) -> None:
        """At the end of the step, for the answers that were not waited for: until ``needed(answers)`` (the workers
        whose answers are still needed; default: every worker still expected) is empty, waiting as :meth:`run` would
        have (until more than half of the asked workers have answered everything, then a straggler grace; never past
        the round's deadline). The files they concern were decided without them; the answers only decide who is
        blamed. A needed worker still missing at the end of the grace is not waited for in the next
        UNWAITED_STEPS steps (nor is lingering, when only such workers are needed)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, self._deadline_at - time.monotonic())
        grace_end: float | None = None
        while self._expected:
            need = set(self._expected) if needed is None else needed(self.answers) & set(self._expected)
            if need <= self._unwaited.at(self.step):
                return
            if grace_end is None and self._lingering_ready():
                grace_end = loop.time() + self._grace(self._later_times if self._later else self._answer_times)
            end = min(deadline, grace_end) if grace_end is not None else deadline
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, end - loop.time()))
            except asyncio.TimeoutError:
                self._note({w: self._expected[w] for w in need if w in self._expected})
                return

    def _lingering_ready(self) -> bool:
        """The straggler grace of :meth:`linger` may start: more than half of the workers asked in the second
        SKETCH have answered all of it (its answers are computed after the first's, often while the PS fetches:
        timed from their own request, not from the first's readiness), or, without a second SKETCH, the round is
        ready."""
        if not self._later:
            return self._ready.is_set()
        return 2 * len(self._owing(self._later)) < len(self._later)

    def _owing(self, pool: dict[int, set[int]]) -> set[int]:
        """The workers of ``pool`` still expected that have not answered one of their files of it."""
        return {w for w, files in pool.items()
                if w in self._expected and any(w not in self.answers[f] for f in files)}

    def close(self) -> dict[int, set[int]]:
        """Stop collecting this round's answers; returns (and keeps in :attr:`missing`) worker -> the files it did
        not answer."""
        self.missing = {w: set(files) for w, files in self._expected.items() if files}
        self._expected = {}
        self._done.set()
        return self.missing

    async def _wait(self, step: int, budget: float) -> None:
        """Until every answer is in, or every answer the caller needs; or a grace after the round became decidable;
        or ``budget`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, budget)
        done, ready = loop.create_task(self._done.wait()), loop.create_task(self._ready.wait())
        enough = loop.create_task(self._enough.wait())
        try:
            finished, _ = await asyncio.wait({done, ready, enough}, timeout=max(0.0, deadline - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
            if ready in finished and not finished & {done, enough}:
                grace = min(self._grace(self._answer_times), max(0.0, deadline - loop.time()))
                await asyncio.wait({done, enough}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            ready.cancel()
            enough.cancel()
        if self._enough.is_set():
            return
        self._note({w: files for w, files in self._pool.items() if w in self._expected})
        if self._expected and not self._done.is_set():
            log.info("step %d: no sketch yet from workers %s: erasures in the sketch vote of the undecided files",
                     step, sorted(self._expected))

    def _note(self, owing: dict[int, set[int]]) -> None:
        """The workers of ``owing`` that still owe one of its files were waited for to the end: for the next
        UNWAITED_STEPS steps no round waits for them (their missing answers are erasures, their blame files ``slow``).
        A worker whose answers nobody waited for (blame settled by the others) is not noted."""
        for worker, files in owing.items():
            if worker in self._expected and any(worker not in self.answers[f] for f in files):
                self._unwaited.note(worker, self.step)

    async def _send(self, link: AgentLink, request: SketchRequest) -> None:
        try:
            await link.conn.send(Kind.SKETCH, request.header())
        except (WireError, ConnectionClosed) as exc:
            log.info("step %d: could not ask worker %d for sketches: %s", self.step, link.worker, exc)
            self._expected.pop(link.worker, None)

    def on_answer(self, link: AgentLink, header: dict) -> None:
        """An agent's SKETCH (called from its connection task)."""
        try:
            answer = parse_sketch_answer(header, self._f, self.params.nbytes)
        except SketchHeaderError as exc:
            self._violation(link, str(exc))
            return
        if answer.step != self.step:
            return  # a late answer of an earlier step
        expected = self._expected.get(link.worker)
        if expected is None or answer.file not in expected:
            if link.worker in self.answers[answer.file]:
                self._violation(link, f"second sketch for file {answer.file} of step {answer.step}")
            return
        reply = SketchReply(None)
        if answer.sketch is not None:
            values = np.frombuffer(answer.sketch, dtype="<f8").reshape(self.params.rows, self.params.width)
            if not np.isfinite(values).all():
                self._violation(link, "sketch holds NaN or Inf")
                return
            reply = SketchReply(values.astype(np.float64), answer.norm)
        self.answers[answer.file][link.worker] = reply
        self._changed.set()
        expected.discard(answer.file)
        if not expected:
            del self._expected[link.worker]
            self._answer_times.append(time.monotonic() - self._started)
            if link.worker in self._later:
                self._later_times.append(time.monotonic() - self._later_started)
        self._check_done()

    def drop_worker(self, worker: int) -> None:
        self._expected.pop(worker, None)
        self._check_done()

    def _check_done(self) -> None:
        if not self._expected:
            self._done.set()
            return
        if self._ready.is_set() and self._enough.is_set():  # nothing below can change: no vote on every answer
            self._changed.set()
            return
        owing = self._owing(self._pool)
        decidable = self._decidable is not None and self._decidable(self.answers)
        # every answer waited for is in; or the round is decidable and the rest is owed only by workers that were
        # waited for to the end lately (an undecidable round still waits for them: their answers may decide it)
        if (self._settled is not None and self._settled(self.answers)) or (
                decidable and owing <= self._unwaited.at(self.step)):
            self._enough.set()
        if self._ready.is_set():
            self._changed.set()
            return
        if 2 * len(owing) < len(self._pool) or decidable:
            self._ready.set()
            self._changed.set()
