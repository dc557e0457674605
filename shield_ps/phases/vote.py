"""The vote phase: one family of votes (exact, tolerant, auto) behind one small protocol, one outcome type.

Every vote turns the step's digests (:class:`~shield_ps.collector.StepCollector`) into winners whose payloads are in
their rows, and reports who lied or was slow in the fetches (:class:`~shield_ps.phases.fetch.FetchReport`):

* exact (:class:`ExactVote`): r' equal digests win; one payload per winner, hedged (one determinism class);
* tolerant (:class:`TolerantVote`): every replica fetched, vectors voted within ``--vote-rtol`` (f*r*d ingress);
* auto (:class:`~shield_ps.phases.auto_vote.AutoVote`): exact where holders agree, the sketch round where not.

Each outcome also names the dropped files that *provably* had a Byzantine majority: every one of the file's r holders
replied, none of their values was invalid, and no value had r' agreeing holders. Honest holders of one file agree
(bit for bit within a class, within the tolerance across classes), so fewer than r' of them were honest and at least
r - r' + 1 = r' were Byzantine: such a file is one of the at most c_max(q) files the adversary could have won, and the
aggregation may lower its Byzantine count by one for it (:mod:`shield_ps.phases.aggregate`).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from byzantine.sketch import SketchReply
from byzantine.vote import VoteResult, vote_digests, vote_tolerant
from shield_ps.collector import StepCollector
from shield_ps.phases.buffers import StepBuffers
from shield_ps.phases.fetch import Fetcher, FetchReport
from shield_ps.phases.names import Phase
from shield_ps.pool import WorkerPool


@dataclass
class VoteOutcome:
    """What the vote phase decided."""

    vote: VoteResult[Any]
    won: list[int]  # files whose winning payload (or group median) is in its row
    report: FetchReport
    provable: set[int] = field(default_factory=set)  # dropped files with a proven Byzantine majority
    used: dict[int, list[tuple[tuple[int, ...], int]]] = field(default_factory=dict)  # split file -> its median
    sketch: dict[str, Any] = field(default_factory=dict)  # the step event's ``sketch`` fields (auto vote)
    answers: list[dict[int, SketchReply]] = field(default_factory=list)  # the sketch answers (auto vote)
    #: called at the end of the step (auto vote): final blame from the sketches that came meanwhile; returns the
    #: workers that never answered a sketch the vote needed (slow)
    settle: Callable[[], Awaitable[set[int]]] | None = None
    excusable: dict[int, set[int]] = field(default_factory=dict)  # file -> losers of another class (auto vote)


class VotePhase(Protocol):
    async def run(self, step: int, collector: StepCollector, times: dict[str, float]) -> VoteOutcome: ...


def provable_drops(vote: VoteResult[Any], replies: Sequence[Mapping[int, Any]], r: int,
                   invalid: set[bytes] = frozenset()) -> set[int]:  # type: ignore[assignment]
    """Dropped files every one of whose ``r`` holders replied with a value that is not ``invalid`` (see the module
    docstring)."""
    return {fv.file for fv in vote.files if fv.winner is None and len(replies[fv.file]) == r
            and not any(isinstance(v, bytes) and v in invalid for v in replies[fv.file].values())}


class ExactVote:
    """``--vote exact``: the streaming vote has usually started each winner's fetch; the rest start now."""

    def __init__(self, placement: Any, fetcher: Fetcher) -> None:
        self.placement, self.fetcher = placement, fetcher

    async def run(self, step: int, collector: StepCollector, times: dict[str, float]) -> VoteOutcome:
        mark = time.perf_counter()
        vote = vote_digests(self.placement, collector.replies)
        times[Phase.VOTE.value] = time.perf_counter() - mark
        mark = time.perf_counter()
        for file_vote in vote.files:  # files decided by the streaming vote are already being fetched
            if file_vote.winner is not None:
                self.fetcher.start_winner(file_vote.file, file_vote.winner, collector.replies[file_vote.file])
        report = await self.fetcher.finish()
        times[Phase.PAYLOAD_FETCH.value] = time.perf_counter() - mark
        if report.invalid:
            vote = vote_digests(self.placement, collector.replies, invalid=report.invalid)
        won = [file for file in vote.files_won if file in report.fetched]
        provable = provable_drops(vote, collector.replies, self.placement.r, report.invalid)
        return VoteOutcome(vote, won, report, provable)


class TolerantVote:
    """``--vote tolerant`` (mixed hardware, before the sketch vote existed): fetch every replica, vote on the vectors
    with ``--vote-rtol``. Ingress is f*r*d floats; each payload must still hash to its sender's own digest."""

    def __init__(self, placement: Any, fetcher: Fetcher, pool: WorkerPool, buffers: StepBuffers,
                 rtol: float) -> None:
        self.placement, self.fetcher, self.pool, self.buffers, self.rtol = placement, fetcher, pool, buffers, rtol
        self._replicas: dict[tuple[int, int], np.ndarray] = {}

    async def run(self, step: int, collector: StepCollector, times: dict[str, float]) -> VoteOutcome:
        mark = time.perf_counter()
        report = self.fetcher.report
        replicas: list[dict[int, np.ndarray]] = [{} for _ in collector.replies]

        async def fetch(file: int, worker: int, digest: bytes) -> None:
            link = self.pool.link(worker)
            buffer = self._replica_buffer(file, worker)
            got = await self.fetcher.fetch_replica(link, file, buffer) if link is not None else None
            if got == digest:
                replicas[file][worker] = buffer
            elif got is not None:
                report.lying.add(worker)

        await asyncio.gather(*(fetch(file, worker, digest) for file, replies in enumerate(collector.replies)
                               for worker, digest in replies.items()))
        times[Phase.PAYLOAD_FETCH.value] = time.perf_counter() - mark
        mark = time.perf_counter()
        vote = await asyncio.get_running_loop().run_in_executor(None, lambda: vote_tolerant(
            self.placement, replicas, rtol=self.rtol))
        for file_vote in vote.files:
            if file_vote.winner is not None:
                self.buffers.put(file_vote.file, file_vote.winner)
        times[Phase.VOTE.value] = time.perf_counter() - mark
        finite = [{w: v for w, v in got.items() if np.isfinite(v).all()} for got in replicas]
        return VoteOutcome(vote, list(vote.files_won), report, provable_drops(vote, finite, self.placement.r))

    def _replica_buffer(self, file: int, worker: int) -> np.ndarray:
        buffer = self._replicas.get((file, worker))
        if buffer is None:
            buffer = self._replicas[(file, worker)] = np.empty(self.buffers.d, dtype=np.float32)
        return buffer
