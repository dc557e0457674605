"""Split files of ``--vote auto``: files the sketch vote decides take the median of the winning group's payloads.

A *split* file is one without r' equal digests among its holders. The sketch vote (:mod:`shield_ps.phases.auto_vote`)
names its winning group: at least r' holders whose sketches agree within the tolerance. This phase fetches one
payload per distinct digest of the group (each hedged among the group members that committed that digest), writes
their coordinate-wise median into the file's row, and checks every payload against that median
(:mod:`byzantine.groups`): an outlier's sketch is recomputed, which proves a lie when it differs from what
its holder sent. So no single holder's payload decides a split file, and a Byzantine group member can move the row
no further than the honest spread (docs/byzantine.md).

Buffers: each payload of the step (a file and a digest) has one buffer, borrowed from the step's buffers when it is
first named and kept until :meth:`SplitFiles.end_step`: the fetcher fetches a payload once per step, so a file voted
again combines the buffer its earlier round fetched into (a fresh buffer would hold whatever was there before).

Liveness: the phase waits until each file's fetched payloads cover r' of its group, then a hedge delay more for the
rest (so a clean run takes every payload and is deterministic), and no longer: a holder that withholds its payload,
even the only holder of its digest, costs the step one hedge delay and is reported ``slow``. For the next
:data:`UNWAITED_STEPS` steps its payloads get no such delay (the phase ends at quorum without them, and a holder that
still did not deliver is ``slow`` again), so one that withholds every step costs one hedge delay in
``UNWAITED_STEPS + 1`` steps, not one a step; the window does not grow, so an honest holder on a slower machine is
waited for again after it. Every fetch is bounded by the fetcher's own deadlines. Cost: up to r payloads per split
file instead of one (only split files: with two determinism classes and r = 3 every disputed file keeps an exact
sub-majority and none is split, unless a Byzantine holder's digest breaks it).
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from byzantine.groups import median_into, outliers
from byzantine.sketch import SketchParams, SketchReply, check_payloads
from byzantine.vote import VoteResult
from shield_ps.phases.buffers import StepBuffers
from shield_ps.phases.deadlines import Deadlines, Unwaited
from shield_ps.phases.fetch import Fetcher

log = logging.getLogger(__name__)


def _same(holders: tuple[int, ...]) -> tuple[int, ...]:
    """``holders``, as a fetch's holders callback."""
    return holders

@dataclass
class GroupOutcome:
    """What the split files of one round came to."""

    won: set[int] = field(default_factory=set)  # files whose median is in their row
    retry: set[int] = field(default_factory=set)  # files to vote again without the holders in ``gone``
    gone: dict[int, set[int]] = field(default_factory=dict)  # file -> holders left out of its next vote
    lying: set[int] = field(default_factory=set)  # proven: a payload contradicting its own sketch
    slow: set[int] = field(default_factory=set)  # did not deliver its payload in time
    outvoted: dict[int, set[int]] = field(default_factory=dict)  # file -> holders whose payload was an outlier
    used: dict[int, list[tuple[tuple[int, ...], int]]] = field(default_factory=dict)  # file -> (holders, weight)
    recomputed: int = 0  # sketches recomputed at the PS (outliers)
    unwaited: int = 0  # payloads missing at quorum that were not waited for (their holders withheld one lately)


@dataclass
class _Payload:
    file: int
    digest: bytes
    holders: tuple[int, ...]
    buffer: np.ndarray
    task: asyncio.Task[None] | None = None


class SplitFiles:
    """Fetches, checks and combines the winning groups' payloads of one step's split files."""

    def __init__(self, fetcher: Fetcher, buffers: StepBuffers, deadlines: Deadlines, r_prime: int,
                 params: SketchParams) -> None:
        self._fetcher, self._buffers, self._deadlines = fetcher, buffers, deadlines
        self._r_prime, self._params = r_prime, params
        self._held: dict[tuple[int, bytes], np.ndarray] = {}  # (file, digest) -> its buffer, this step
        self._cut: set[tuple[int, bytes]] = set()  # payloads whose fetch was cancelled: a copy may still land
        self._unwaited = Unwaited()  # holders that withheld a payload: their payloads not waited for past quorum

    async def resolve(self, step: int, files: Sequence[int], vote: VoteResult[int],
                      replies: Sequence[Mapping[int, bytes]], answers: Sequence[Mapping[int, SketchReply]],
                      seed: bytes, tolerance: float) -> GroupOutcome:
        """Fetch and combine the winning groups of ``files`` (those the sketch vote gave a winner)."""
        outcome = GroupOutcome()
        payloads = self._start(files, vote, replies)
        try:
            outcome.unwaited = await self._wait(payloads, step)
            fetched = self._settle(payloads, outcome, step)
            await self._combine(step, fetched, answers, seed, tolerance, outcome)
        finally:
            await self._release(payloads)
        return outcome

    # ---- fetching ---------------------------------------------------------------------------------------------
    def _start(self, files: Sequence[int], vote: VoteResult[int],
               replies: Sequence[Mapping[int, bytes]]) -> list[_Payload]:
        payloads = []
        for file in files:
            group = vote.files[file].holders
            by_digest: dict[bytes, list[int]] = {}
            for worker in group:
                by_digest.setdefault(replies[file][worker], []).append(worker)
            for digest, holders in sorted(by_digest.items()):
                buffer = self._held.get((file, digest))
                if buffer is None:
                    buffer = self._held[(file, digest)] = self._buffers.borrow()
                payload = _Payload(file, digest, tuple(sorted(holders)), buffer)
                payload.task = self._fetcher.start_payload(file, digest, functools.partial(_same, payload.holders),
                                                           payload.buffer)
                payloads.append(payload)
        return payloads

    async def _wait(self, payloads: list[_Payload], step: int) -> int:
        """Until every fetch ended, or a hedge delay after each file's fetched payloads cover r' holders (at quorum
        when every payload still missing is held only by holders not waited for this step); returns how many
        payloads were missing at quorum and not waited for."""
        loop = asyncio.get_running_loop()
        unwaited = self._unwaited.at(step)  # a payload is waited for past quorum while one holder is not in here
        grace_ends: float | None = None
        while True:
            running = {p.task for p in payloads if p.task is not None and not p.task.done()}
            if not running:
                return 0
            if self._quorum(payloads):
                waited = {p.task for p in payloads if p.task in running and not set(p.holders) <= unwaited}
                if not waited:
                    return len(running)
                running = waited
                if grace_ends is None:
                    grace_ends = loop.time() + self._deadlines.hedge_delay(self._buffers.nbytes)
            timeout = None if grace_ends is None else max(0.0, grace_ends - loop.time())
            done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                return 0

    def _quorum(self, payloads: list[_Payload]) -> bool:
        weight: dict[int, int] = {}
        for payload in payloads:
            weight.setdefault(payload.file, 0)
            if (payload.file, payload.digest) in self._fetcher.report.payloads:
                weight[payload.file] += len(payload.holders)
        return all(w >= self._r_prime for w in weight.values())

    def _settle(self, payloads: list[_Payload], outcome: GroupOutcome, step: int) -> dict[int, list[_Payload]]:
        """The payloads that arrived, per file; the holders of the others are slow and left out of a next vote (and,
        when they were waited for, not waited for past quorum in the next UNWAITED_STEPS steps)."""
        fetched: dict[int, list[_Payload]] = {}
        for payload in payloads:
            fetched.setdefault(payload.file, [])
            if (payload.file, payload.digest) in self._fetcher.report.payloads:
                fetched[payload.file].append(payload)
                continue
            if payload.digest in self._fetcher.report.invalid:  # a finite sketch of a non-finite payload: a lie
                outcome.lying.update(payload.holders)
            else:
                outcome.slow.update(payload.holders)
                for worker in payload.holders:
                    self._unwaited.note(worker, step)
            outcome.gone.setdefault(payload.file, set()).update(payload.holders)
        return fetched

    # ---- combining --------------------------------------------------------------------------------------------
    async def _combine(self, step: int, fetched: dict[int, list[_Payload]],
                       answers: Sequence[Mapping[int, SketchReply]], seed: bytes, tolerance: float,
                       outcome: GroupOutcome) -> None:
        loop = asyncio.get_running_loop()
        hiding = self._params.hiding()
        for file, got in fetched.items():
            while got:
                if sum(len(p.holders) for p in got) < self._r_prime:
                    break
                row = self._buffers.row(file)
                suspects = await loop.run_in_executor(None, self._median_and_outliers, got, row, tolerance, hiding)
                if not suspects:
                    outcome.won.add(file)
                    outcome.used[file] = [(p.holders, len(p.holders)) for p in got]
                    break
                await self._judge(step, file, [got[i] for i in suspects], answers, seed, outcome)
                got = [p for i, p in enumerate(got) if i not in suspects]
            if file not in outcome.won:
                outcome.retry.add(file)

    @staticmethod
    def _median_and_outliers(got: list[_Payload], row: np.ndarray, tolerance: float, hiding: float) -> list[int]:
        median_into([p.buffer for p in got], [len(p.holders) for p in got], row)
        return outliers([p.buffer for p in got], row, tolerance, hiding) if len(got) > 1 else []

    async def _judge(self, step: int, file: int, suspects: list[_Payload], answers: Sequence[Mapping[int, SketchReply]],
                     seed: bytes, outcome: GroupOutcome) -> None:
        """Recompute each outlier's sketch: a holder whose sketch differs lied; the others are outvoted."""
        items = [(p.buffer, answers[file][w]) for p in suspects for w in p.holders if w in answers[file]]
        owners = [w for p in suspects for w in p.holders if w in answers[file]]
        verdicts = await asyncio.get_running_loop().run_in_executor(
            None, lambda: check_payloads(items, seed, self._params))
        outcome.recomputed += len(items)
        for worker, why in zip(owners, verdicts, strict=False):
            if why is not None:
                log.warning("step %d: worker %d lied about file %d: %s", step, worker, file, why)
                outcome.lying.add(worker)
            else:
                outcome.outvoted.setdefault(file, set()).add(worker)
            outcome.gone.setdefault(file, set()).add(worker)

    async def _release(self, payloads: list[_Payload]) -> None:
        """Cancel the fetches still running (their buffers stay held until :meth:`end_step`)."""
        for payload in payloads:
            if payload.task is not None and not payload.task.done():
                payload.task.cancel()
                self._cut.add((payload.file, payload.digest))
        await asyncio.gather(*(p.task for p in payloads if p.task is not None), return_exceptions=True)

    def end_step(self) -> None:
        """The step's split files are decided: every payload buffer goes back to the step's buffers (one whose fetch
        was cancelled is quarantined: its copy, in an executor thread, may still write into it this step)."""
        for key, buffer in self._held.items():
            if key in self._cut:
                self._buffers.quarantine(buffer)
            else:
                self._buffers.give_back(buffer)
        self._held.clear()
        self._cut.clear()
