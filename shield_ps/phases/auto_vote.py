"""``--vote auto``: exact digests where a file's holders agree, the commit-then-sketch round where they do not.

Per file, after the gather:

* all present digests equal: the exact path (the streaming vote has usually fetched it already);
* digests differ (the file is *disputed*): its holders sketch their gradients under a seed revealed now
  (:mod:`shield_ps.phases.sketch`) and the sketch vote groups replicas within the tolerance
  (:func:`shield_ps.byzantine.sketch.vote_sketches`, ties broken by a hash keyed with that seed, so no holder can
  grind its digest into a tie's win).

  - If some digest still has r' equal copies, it wins exactly as in the exact vote (its payload is what r' holders
    committed to) and the sketch vote only decides who disagreed: a replica of another class within the tolerance
    is not blamed, and a holder that sent another digest and then no sketch is outvoted, never absolved. Such files
    never hold the sketch round up.
  - Otherwise (a *split* file) the sketch vote's winning group decides: the PS fetches one payload per digest of the
    group and keeps their coordinate-wise median (:mod:`shield_ps.phases.groups`); an outlier's sketch is recomputed
    and a mismatch proves its holder lied. Liars are excluded and the file is voted again (at most r rounds); holders
    that did not deliver in time are left out of that file's next vote.

A holder whose sketch agreed but whose payload the PS never needed is audited now and then
(:mod:`shield_ps.phases.audit`). Ingress: one payload per exact file, one per group digest of a split file, plus the
sketches (k*c*8 bytes per disputed replica).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from shield_ps.byzantine.sketch import SketchReply, vote_sketches
from shield_ps.byzantine.vote import FileVote, VoteResult, vote_digests
from shield_ps.collector import StepCollector
from shield_ps.phases.fetch import Fetcher
from shield_ps.phases.groups import GroupOutcome, SplitFiles
from shield_ps.phases.sketch import SketchRound
from shield_ps.phases.vote import VoteOutcome, provable_drops

log = logging.getLogger(__name__)


def disputed_files(replies: Sequence[Mapping[int, bytes]]) -> list[int]:
    """Files whose present digests are not all equal."""
    return [file for file, got in enumerate(replies) if len(set(got.values())) > 1]


@dataclass
class SplitResult:
    """The split files of one step after every round."""

    files: dict[int, FileVote[bytes]] = field(default_factory=dict)
    won: set[int] = field(default_factory=set)
    lying: set[int] = field(default_factory=set)
    slow: set[int] = field(default_factory=set)
    used: dict[int, list[tuple[tuple[int, ...], int]]] = field(default_factory=dict)
    recomputed: int = 0
    provable: set[int] = field(default_factory=set)  # dropped at the first vote with every holder's sketch in


class AutoVote:
    """Runs the auto vote of one step over the runner's fetcher and rows."""

    def __init__(self, placement: Any, fetcher: Fetcher, sketches: SketchRound, rows: np.ndarray,
                 start_fetch: Callable[[StepCollector, int, bytes], None], splits: SplitFiles) -> None:
        self.placement = placement
        self.fetcher, self.sketches, self.rows, self.splits = fetcher, sketches, rows, splits
        self._start_fetch = start_fetch
        self.tolerance = 0.0
        self.last: dict[str, Any] = {}
        self.used: dict[int, list[tuple[tuple[int, ...], int]]] = {}  # split file -> payloads in its median
        self.answers: list[dict[int, SketchReply]] = []

    async def run(self, step: int, collector: StepCollector, times: dict[str, float]) -> VoteOutcome:
        mark = time.perf_counter()
        replies = collector.replies
        exact = vote_digests(self.placement, replies)
        for file_vote in exact.files:
            if file_vote.winner is not None:
                self._start_fetch(collector, file_vote.file, file_vote.winner)
        disputed = disputed_files(replies)
        self.last = {"disputed": len(disputed), "sketch_won": 0, "tolerance": self.tolerance}
        self.used, self.answers = {}, []
        if not disputed:
            times["vote"] = time.perf_counter() - mark
            return await self._finish(exact, list(exact.files), replies, set(), SplitResult())
        split = [f for f in disputed if exact.files[f].winner is None]
        answers = self.answers = await self._sketch_round(step, replies, disputed, split, times)
        files = self._blamed(exact, replies, answers, disputed)
        times["vote"] = time.perf_counter() - mark
        result = await self._resolve_split(step, split, replies, answers)
        r = self.placement.r
        first = vote_sketches(self.placement, answers, self.tolerance, digests=replies, order_key=self.sketches.seed)
        result.provable = {f for f in split if first.files[f].winner is None and len(answers[f]) == r
                           and all(a.finite for a in answers[f].values())}
        for file, file_vote in result.files.items():
            files[file] = file_vote
        self.used = result.used
        self.last.update(sketch_won=len(result.won), split=len(split), recomputed=result.recomputed)
        outcome = await self._finish(exact, files, replies, result.slow, result)
        outcome.settle = lambda: self._settle(outcome, exact, replies, disputed, set(result.files))
        return outcome

    def _blamed(self, exact: VoteResult[bytes], replies: Sequence[Mapping[int, bytes]],
                answers: list[dict[int, SketchReply]], disputed: list[int]) -> list[FileVote[bytes]]:
        """The exact vote, with the blame of each disputed file that has an exact winner taken from the sketches
        in so far."""
        files = list(exact.files)
        sketched = vote_sketches(self.placement, answers, self.tolerance, digests=replies,
                                 order_key=self.sketches.seed)
        for file in disputed:
            if exact.files[file].winner is not None:
                files[file] = blame(exact.files[file], sketched.files[file], set(answers[file]))
        return files

    def _settle(self, outcome: VoteOutcome, exact: VoteResult[bytes], replies: Sequence[Mapping[int, bytes]],
                disputed: list[int], split: set[int]) -> set[int]:
        """At the end of the step: the sketch answers are closed; files decided by an exact winner take their final
        blame from every answer that came (they never waited for one). Returns the workers that sent another digest
        than a file's exact winner and no sketch by now, and those that never answered a sketch an undecided file
        needed: both slow (a lost digest with a sketch that disagrees is outvoted)."""
        missing = self.sketches.close()
        decided = [f for f in disputed if f not in split]
        blamed = self._blamed(exact, replies, self.answers, decided)
        files = list(outcome.vote.files)
        quiet: set[int] = set()
        for file in decided:
            if files[file].winner == exact.files[file].winner:
                quiet_here = silent(exact.files[file], set(self.answers[file]))
                fv = blamed[file]
                files[file] = FileVote(file, fv.winner, fv.holders,
                                       tuple(w for w in fv.disagreeing if w not in quiet_here), fv.absent)
                quiet |= quiet_here
        outcome.vote = VoteResult(tuple(files), outcome.vote.r_prime)
        outvoted = {w for fv in files for w in fv.disagreeing}
        return (quiet | {w for w, fs in missing.items() if fs & split}) - outvoted

    async def _sketch_round(self, step: int, replies: Sequence[Mapping[int, bytes]], disputed: list[int],
                            split: list[int], times: dict[str, float]) -> list[dict[int, SketchReply]]:
        requests: dict[int, list[int]] = {}
        for file in disputed:
            for worker in replies[file]:
                requests.setdefault(worker, []).append(file)
        holders = self.placement.file_workers
        r_prime = self.placement.r_prime

        def decidable(answers: list[dict[int, SketchReply]]) -> bool:
            return all(vote_sketches([holders[f]], [answers[f]], self.tolerance, r_prime).files[0].won
                       for f in split)

        answers = await self.sketches.run(step, {w: tuple(fs) for w, fs in requests.items()},
                                          times.get("compute", 0.0), decidable=decidable, wait=bool(split))
        for file in range(len(answers)):
            if file not in disputed:
                answers[file] = {}
        return answers

    async def _resolve_split(self, step: int, split: list[int], replies: Sequence[Mapping[int, bytes]],
                             answers: list[dict[int, SketchReply]]) -> SplitResult:
        """Vote the split files on their sketches and take their groups' medians, at most r rounds."""
        result = SplitResult()
        excluded: set[int] = set()
        gone: dict[int, set[int]] = {}
        pending = list(split)
        for _ in range(self.placement.r):
            if not pending:
                break
            current = [{w: a for w, a in got.items() if w not in gone.get(file, ())}
                       for file, got in enumerate(answers)]
            vote = vote_sketches(self.placement, current, self.tolerance, excluded=excluded, digests=replies,
                                 order_key=self.sketches.seed)
            decided = [f for f in pending if vote.files[f].winner is not None]
            for file in pending:
                result.files[file] = as_digest_vote(vote.files[file], replies[file])
            if not decided:
                break
            outcome = await self.splits.resolve(step, decided, vote, replies, answers, self.sketches.seed,
                                                self.tolerance)
            self._merge(result, outcome, vote, replies, excluded, gone)
            pending = sorted(outcome.retry)
        for file in split:
            if file not in result.won:
                result.files[file] = FileVote(file, None, (), result.files[file].disagreeing if file in result.files
                                              else (), tuple(self.placement.file_workers[file]))
        return result

    @staticmethod
    def _merge(result: SplitResult, outcome: GroupOutcome, vote: VoteResult[int],
               replies: Sequence[Mapping[int, bytes]], excluded: set[int], gone: dict[int, set[int]]) -> None:
        result.won |= outcome.won
        result.lying |= outcome.lying
        result.slow |= outcome.slow
        result.recomputed += outcome.recomputed
        excluded |= outcome.lying
        for file, workers in outcome.gone.items():
            gone.setdefault(file, set()).update(workers)
        for file in outcome.won:
            used = outcome.used[file]
            result.used[file] = used
            in_median = {w for holders, _ in used for w in holders}
            sketched = vote.files[file]
            out = set(sketched.disagreeing) | (set(sketched.holders) - in_median) | outcome.outvoted.get(file, set())
            center = replies[file][min(in_median)]
            result.files[file] = FileVote(file, center, tuple(sorted(in_median)), tuple(sorted(out - in_median)),
                                          sketched.absent)

    async def _finish(self, exact: VoteResult[bytes], files: list[FileVote[bytes]],
                      replies: Sequence[Mapping[int, bytes]], slow: set[int], split: SplitResult) -> VoteOutcome:
        """Wait for the exact winners' fetches; a non-finite winning payload drops its file and blames its
        senders."""
        report = await self.fetcher.finish()
        report.lying |= split.lying
        report.slow |= slow - split.lying
        if report.invalid:
            revote = vote_digests(self.placement, replies, invalid=report.invalid)
            for file, file_vote in enumerate(files):
                if file in split.files:
                    continue
                if len(set(replies[file].values())) <= 1:
                    files[file] = revote.files[file]
                elif file_vote.winner in report.invalid:
                    bad = tuple(sorted(w for w, d in replies[file].items() if d in report.invalid))
                    files[file] = FileVote(file, None, (), bad, file_vote.absent)
        vote = VoteResult(tuple(files), exact.r_prime)
        won = [f for f in vote.files_won if f in report.fetched or f in split.won]
        undisputed = [replies[f] if f not in split.files else {} for f in range(len(replies))]
        provable = provable_drops(vote, undisputed, self.placement.r, report.invalid) | split.provable
        return VoteOutcome(vote, won, report, provable, split.used, dict(self.last), self.answers)


def blame(exact: FileVote[bytes], sketched: FileVote[int], answered: set[int]) -> FileVote[bytes]:
    """An exact winner stands; who disagreed comes from the sketch vote when its group holds every exact winner
    (a replica of another class within the tolerance is not blamed), else from the digests. A holder whose digest
    lost and who sent no sketch is left out of both (:func:`silent`): it is reported slow, never absolved."""
    if sketched.winner is not None and set(exact.holders) <= set(sketched.holders):
        agreeing = tuple(sorted(set(exact.holders) | set(sketched.holders)))
        disagreeing = tuple(sorted(set(sketched.disagreeing) & answered))
        return FileVote(exact.file, exact.winner, agreeing, disagreeing, exact.absent)
    return exact


def silent(exact: FileVote[bytes], answered: set[int]) -> set[int]:
    """Holders of a file decided by an exact winner whose digest lost and who sent no sketch (yet)."""
    return {w for w in exact.disagreeing if w not in answered}


def as_digest_vote(sketched: FileVote[int], replies: Mapping[int, bytes]) -> FileVote[bytes]:
    winner = replies[sketched.winner] if sketched.winner is not None else None
    return FileVote(sketched.file, winner, sketched.holders, sketched.disagreeing, sketched.absent)
