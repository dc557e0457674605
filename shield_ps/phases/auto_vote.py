"""``--vote auto``: exact digests where a file's holders agree, the commit-then-sketch round where they do not.

Per file, after the gather:

* all present digests equal: today's exact path (the streaming vote has usually fetched it already);
* digests differ (the file is *disputed*): its holders sketch their gradients under a seed revealed now
  (:mod:`shield_ps.phases.sketch`) and the sketch vote groups replicas within the tolerance
  (:func:`shield_ps.byzantine.sketch.vote_sketches`).
  - If some digest still has r' equal copies, it wins exactly as in the exact vote (its payload is what r' holders
    committed to) and the sketch vote only decides who disagreed: a replica of another class within the tolerance
    is not blamed.
  - Otherwise the sketch vote's center wins: one payload of the center's digest is fetched (hedged among the
    holders that committed the same digest), checked against that digest, and its sketch recomputed at the PS and
    compared bit for bit with the center's (:func:`shield_ps.byzantine.sketch.check_payload`). A mismatch proves the
    center lied: it is marked lying, excluded, and the file is voted again (at most r rounds); when no holder of the
    center's digest delivers it in time, they are left out of that file's next vote.

Ingress stays one payload per file plus the sketches (k*c*8 bytes per disputed replica).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import numpy as np

from shield_ps.byzantine.sketch import SketchReply, check_payloads, vote_sketches
from shield_ps.byzantine.vote import FileVote, VoteResult, vote_digests
from shield_ps.collector import StepCollector
from shield_ps.phases.fetch import Fetcher, FetchReport
from shield_ps.phases.sketch import SketchRound

log = logging.getLogger(__name__)


def disputed_files(replies: list[dict[int, bytes]]) -> list[int]:
    """Files whose present digests are not all equal."""
    return [file for file, got in enumerate(replies) if len(set(got.values())) > 1]


class AutoVote:
    """Runs the auto vote of one step over the runner's fetcher and rows."""

    def __init__(self, placement: Any, fetcher: Fetcher, sketches: SketchRound, rows: np.ndarray,
                 start_fetch: Callable[[StepCollector, int, bytes], None]) -> None:
        self.placement = placement
        self.fetcher, self.sketches, self.rows = fetcher, sketches, rows
        self._start_fetch = start_fetch
        self.tolerance = 0.0
        self.last: dict[str, Any] = {}

    async def run(self, step: int, collector: StepCollector,
                  times: dict[str, float]) -> tuple[VoteResult[bytes], list[int], FetchReport]:
        mark = time.perf_counter()
        replies = collector.replies
        exact = vote_digests(self.placement, replies)
        for file_vote in exact.files:
            if file_vote.winner is not None:
                self._start_fetch(collector, file_vote.file, file_vote.winner)
        disputed = disputed_files(replies)
        self.last = {"disputed": len(disputed), "sketch_won": 0, "tolerance": self.tolerance}
        if not disputed:
            times["vote"] = time.perf_counter() - mark
            mark = time.perf_counter()
            report = await self.fetcher.finish()
            times["gather"] = time.perf_counter() - mark  # the winners' payloads not fetched during compute
            if report.invalid:
                exact = vote_digests(self.placement, replies, invalid=report.invalid)
            return exact, [f for f in exact.files_won if f in report.fetched], report

        requests: dict[int, list[int]] = {}
        for file in disputed:
            for worker in replies[file]:
                requests.setdefault(worker, []).append(file)
        answers = await self.sketches.run(step, {w: tuple(fs) for w, fs in requests.items()},
                                          times.get("compute", 0.0))
        for file in range(len(answers)):
            if file not in disputed:
                answers[file] = {}
        excluded: set[int] = set()  # proven liars: out of every file's vote
        gone: dict[int, set[int]] = {}  # file -> holders of a center digest that nobody delivered
        files = list(exact.files)
        sketch_vote = vote_sketches(self.placement, answers, self.tolerance, digests=replies)
        for file in disputed:
            if exact.files[file].winner is not None:
                files[file] = self._blame(exact.files[file], sketch_vote.files[file])
        times["vote"] = time.perf_counter() - mark
        mark = time.perf_counter()

        pending = [f for f in disputed if exact.files[f].winner is None]
        lying: set[int] = set()
        for _ in range(self.placement.r):
            if not pending:
                break
            current = [{w: a for w, a in got.items() if w not in gone.get(file, ())}
                       for file, got in enumerate(answers)]
            sketch_vote = vote_sketches(self.placement, current, self.tolerance, excluded=excluded, digests=replies)
            started = []
            for file in pending:
                center = sketch_vote.files[file].winner
                files[file] = self._as_digest_vote(sketch_vote.files[file], replies[file])
                if center is None:
                    continue
                digest = replies[file][center]
                group = set(sketch_vote.files[file].holders)
                self.fetcher.forget(file)
                self.fetcher.start(file, digest, lambda file=file, digest=digest, group=group: tuple(sorted(
                    w for w, d in replies[file].items() if d == digest and w in group and w not in excluded)))
                started.append((file, center))
            report = await self.fetcher.finish()
            pending = []
            for file, center in started:
                if file in report.fetched:
                    continue
                digest = replies[file][center]
                if digest in report.invalid:  # a center whose committed payload is not finite lied in its sketch
                    lying.add(center)
                    excluded.add(center)
                else:  # nobody holding the center's digest delivered it: try the next group without them
                    gone.setdefault(file, set()).update(w for w, d in replies[file].items() if d == digest)
                pending.append(file)
            fetched = [(file, center) for file, center in started if file in report.fetched]
            verdicts = await asyncio.get_running_loop().run_in_executor(
                None, self._check, [(self.rows[file], answers[file][center]) for file, center in fetched])
            for (file, center), why in zip(fetched, verdicts):
                if why is None:
                    self.last["sketch_won"] += 1
                    continue
                log.warning("step %d: worker %d lied about file %d: %s", step, center, file, why)
                report.fetched.discard(file)
                lying.add(center)
                excluded.add(center)
                pending.append(file)
        report = await self.fetcher.finish()  # the exact winners' fetches may still be running
        times["gather"] = time.perf_counter() - mark  # the payloads' fetches and checks after the sketch vote
        report.lying |= lying
        for file in pending:  # still unresolved after r rounds: dropped
            files[file] = FileVote(file, None, (), (), tuple(self.placement.file_workers[file]))
        if report.invalid:  # winning payloads found non-finite: the file is dropped, their senders disagree
            revote = vote_digests(self.placement, replies, invalid=report.invalid)
            for file, file_vote in enumerate(files):
                if file not in disputed:
                    files[file] = revote.files[file]
                elif file_vote.winner in report.invalid:
                    bad = tuple(sorted(w for w, d in replies[file].items() if d in report.invalid))
                    files[file] = FileVote(file, None, (), bad, file_vote.absent)
        vote = VoteResult(tuple(files), exact.r_prime)
        return vote, [f for f in vote.files_won if f in report.fetched], report

    def _check(self, items: list[tuple[np.ndarray, SketchReply]]) -> list[str | None]:
        return check_payloads(items, self.sketches.seed, self.sketches.params)

    @staticmethod
    def _blame(exact: FileVote[bytes], sketched: FileVote[int]) -> FileVote[bytes]:
        """An exact winner stands; who disagreed comes from the sketch vote when its group holds every exact
        winner (a replica of another class within the tolerance is not blamed), else from the digests."""
        if sketched.winner is not None and set(exact.holders) <= set(sketched.holders):
            agreeing = tuple(sorted(set(exact.holders) | set(sketched.holders)))
            return FileVote(exact.file, exact.winner, agreeing, sketched.disagreeing, exact.absent)
        return exact

    @staticmethod
    def _as_digest_vote(sketched: FileVote[int], replies: dict[int, bytes]) -> FileVote[bytes]:
        winner = replies[sketched.winner] if sketched.winner is not None else None
        return FileVote(sketched.file, winner, sketched.holders, sketched.disagreeing, sketched.absent)
