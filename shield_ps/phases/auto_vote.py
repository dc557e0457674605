"""``--vote auto``: exact digests where a file's holders agree, the commit-then-sketch round where they do not.

Per file, after the gather:

* all present digests equal: the exact path (the streaming vote has usually fetched it already);
* digests differ (the file is *disputed*): its holders sketch their gradients under a seed revealed now
  (:mod:`shield_ps.phases.sketch`) and the sketch vote groups replicas within the tolerance
  (:func:`byzantine.sketch.vote_sketches`, ties broken by a hash keyed with that seed, so no holder can
  grind its digest into a tie's win).

  - If some digest still has r' equal copies, it wins exactly as in the exact vote (its payload is what r' holders
    committed to) and the sketch vote only decides who disagreed: a replica of another class within the tolerance
    is not blamed, and a holder that sent another digest and then no sketch is outvoted, never absolved. Such files
    never hold the sketch round up.
  - A file without an exact winner whose digests and holders' determinism classes alone prove a Byzantine majority
    (:func:`honest_bound`: e.g. r holders of one class with no r' equal digests) is dropped at once, without a
    sketch round, and lowers the aggregator's s soundly.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from byzantine.sketch import SketchReply, agree, vote_sketches
from byzantine.vote import FileVote, VoteResult, vote_digests
from shield_ps.classes import UNKNOWN_CLASS
from shield_ps.collector import StepCollector
from shield_ps.phases.fetch import Fetcher
from shield_ps.phases.groups import GroupOutcome, SplitFiles
from shield_ps.phases.names import Phase
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
    unwaited: int = 0  # split payloads not waited for past quorum (shield_ps.phases.groups)
    provable: set[int] = field(default_factory=set)  # dropped at the first vote with every holder's sketch in


class AutoVote:
    """Runs the auto vote of one step over the fetcher (exact winners) and the split files (their groups)."""

    def __init__(self, placement: Any, fetcher: Fetcher, sketches: SketchRound, splits: SplitFiles) -> None:
        self.placement = placement
        self.fetcher, self.sketches, self.splits = fetcher, sketches, splits
        self.tolerance = 0.0
        self.last: dict[str, Any] = {}
        self.used: dict[int, list[tuple[tuple[int, ...], int]]] = {}  # split file -> payloads in its median
        self.answers: list[dict[int, SketchReply]] = []
        self.class_of: Callable[[int], str] = lambda worker: "unknown"  # a worker's determinism class

    async def run(self, step: int, collector: StepCollector, times: dict[str, float]) -> VoteOutcome:
        mark = time.perf_counter()
        replies = collector.replies
        exact = vote_digests(self.placement, replies)
        for file_vote in exact.files:
            if file_vote.winner is not None:
                self.fetcher.start_winner(file_vote.file, file_vote.winner, replies[file_vote.file])
        disputed = disputed_files(replies)
        self.last = {"disputed": len(disputed), "sketch_won": 0, "tolerance": self.tolerance}
        self.used, self.answers = {}, []
        if not disputed:
            times[Phase.VOTE.value] = time.perf_counter() - mark
            mark = time.perf_counter()
            outcome = await self._finish(exact, list(exact.files), replies, set(), SplitResult())
            # the winners' payloads not fetched during the digest gather
            times[Phase.PAYLOAD_FETCH.value] = time.perf_counter() - mark
            return outcome
        undecided = [f for f in disputed if exact.files[f].winner is None]
        holders = self.placement.file_workers
        r_prime = self.placement.r_prime
        proven = {f for f in undecided if honest_bound(replies[f], holders[f], self.class_of) < r_prime}
        split = [f for f in undecided if f not in proven]
        excusable = {f: self._excusable(exact.files[f]) for f in disputed if f not in undecided}
        answers = self.answers = await self._sketch_round(step, exact, replies, split, excusable, times)
        files = self._blamed(exact, replies, answers, excusable)
        times[Phase.VOTE.value] = time.perf_counter() - mark
        mark = time.perf_counter()
        result = await self._resolve_split(step, split, replies, answers)
        r = self.placement.r
        first = vote_sketches(self.placement, answers, self.tolerance, digests=replies, order_key=self.sketches.seed)
        result.provable = {f for f in split if first.files[f].winner is None and len(answers[f]) == r
                           and all(a.finite for a in answers[f].values())} | proven
        for file in proven:
            result.files[file] = FileVote(file, None, (), (), tuple(holders[file]))
        for file, file_vote in result.files.items():
            files[file] = file_vote
        self.used = result.used
        self.last.update(sketch_won=len(result.won), split=len(split), recomputed=result.recomputed,
                         proven_by_class=len(proven), unwaited=result.unwaited)
        outcome = await self._finish(exact, files, replies, result.slow, result)
        # the split files' groups and the remaining fetches
        times[Phase.PAYLOAD_FETCH.value] = time.perf_counter() - mark
        outcome.settle = lambda: self._settle(outcome, exact, replies, excusable, set(split))
        outcome.excusable = excusable
        return outcome

    def _excusable(self, exact: FileVote[bytes]) -> set[int]:
        """Holders that lost to an exact winner but belong to another determinism class than every winner (or to
        none known): only their sketch can show they agree. A loser of a winner's own class has no excuse."""
        winners = {self.class_of(w) for w in exact.holders}
        return {w for w in exact.disagreeing if self.class_of(w) not in winners or self.class_of(w) == "unknown"}

    def _blamed(self, exact: VoteResult[bytes], replies: Sequence[Mapping[int, bytes]],
                answers: list[dict[int, SketchReply]], excusable: Mapping[int, set[int]]) -> list[FileVote[bytes]]:
        """The exact vote, with the blame of each disputed file that has an exact winner taken from the sketches
        in so far."""
        files = list(exact.files)
        for file, losers in excusable.items():
            files[file] = blame(exact.files[file], answers[file], losers, self.tolerance)
        return files

    async def _settle(self, outcome: VoteOutcome, exact: VoteResult[bytes], replies: Sequence[Mapping[int, bytes]],
                      excusable: Mapping[int, set[int]], split: set[int]) -> set[int]:
        """At the end of the step: the answers blame still needs (each excusable loser's own, and one winner's per
        file) get one straggler grace, then the round is closed; files decided by an exact winner take their final
        blame from the answers that came (their decision never waited for one). Returns the slow: excusable losers
        that sent no sketch, the winners of a file none of whose winners sketched, and the holders that never
        answered a sketch an undecided file needed (a lost digest with a sketch that disagrees is outvoted)."""
        def needed(answers: list[dict[int, SketchReply]]) -> set[int]:
            """The workers whose sketches blame still needs: each excusable loser's own, and every winner's of a file
            none of whose winners has answered."""
            need: set[int] = set()
            for f, losers in excusable.items():
                if losers:
                    need |= losers - answers[f].keys()
                    if not any(w in answers[f] for w in exact.files[f].holders):
                        need |= set(exact.files[f].holders)
            return need

        await self.sketches.linger(needed)
        missing = self.sketches.close()
        blamed = self._blamed(exact, replies, self.answers, excusable)
        files = list(outcome.vote.files)
        quiet: set[int] = set()
        for file, losers in excusable.items():
            if not losers or files[file].winner != exact.files[file].winner:
                continue
            files[file] = blamed[file]
            quiet |= unanswered(exact.files[file], losers, self.answers[file])
        outcome.vote = VoteResult(tuple(files), outcome.vote.r_prime)
        outvoted = {w for fv in files for w in fv.disagreeing}
        return (quiet | {w for w, fs in missing.items() if fs & split}) - outvoted

    async def _sketch_round(self, step: int, exact: VoteResult[bytes], replies: Sequence[Mapping[int, bytes]],
                            split: list[int], excusable: Mapping[int, set[int]], times: dict[str, float]
                            ) -> list[dict[int, SketchReply]]:
        """Ask every holder of a split file, and for a file with an exact winner its excusable losers and the
        winners (to compare with), for their sketches; waits only for the split files' (the others only decide
        blame: they come in while the step goes on, until :meth:`_settle`)."""
        asked = {f: set(replies[f]) for f in split}
        for file, losers in excusable.items():
            if losers:  # the winners sketch too, to be compared with
                asked[file] = set(exact.files[file].holders) | losers
        requests: dict[int, list[int]] = {}  # the split files' sketches, waited for
        later: dict[int, list[int]] = {}  # blame only: asked once the split files are settled
        for file, workers in asked.items():
            for worker in workers:
                (requests if file in split else later).setdefault(worker, []).append(file)
        holders = self.placement.file_workers
        r_prime = self.placement.r_prime

        def decidable(answers: list[dict[int, SketchReply]]) -> bool:
            return all(vote_sketches([holders[f]], [answers[f]], self.tolerance, r_prime).files[0].won
                       for f in split)

        def settled(answers: list[dict[int, SketchReply]]) -> bool:
            return all(asked[f] <= answers[f].keys() for f in split)

        answers = await self.sketches.run(step, {w: tuple(fs) for w, fs in requests.items()},
                                          times.get(Phase.DIGEST_GATHER.value, 0.0),
                                          decidable=decidable if split else None, settled=settled if split else None,
                                          wait=bool(split), later={w: tuple(fs) for w, fs in later.items()})
        for file in range(len(answers)):
            if file not in asked:
                answers[file] = {}
        return answers

    async def _resolve_split(self, step: int, split: list[int], replies: Sequence[Mapping[int, bytes]],
                             answers: list[dict[int, SketchReply]]) -> SplitResult:
        """Vote the split files on their sketches and take their groups' medians, at most r rounds."""
        try:
            return await self._split_rounds(step, split, replies, answers)
        finally:
            self.splits.end_step()

    async def _split_rounds(self, step: int, split: list[int], replies: Sequence[Mapping[int, bytes]],
                            answers: list[dict[int, SketchReply]]) -> SplitResult:
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
        result.unwaited += outcome.unwaited
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


def honest_bound(replies: Mapping[int, bytes], holders: Sequence[int], class_of: Callable[[int], str]) -> int:
    """The most honest holders a file without an exact winner can have, from its digests and its holders'
    determinism classes alone: honest holders of one class commit bit-identical gradients (the premise of the exact
    vote, checked at join by the probes), so a class contributes at most its most repeated digest; a holder of no
    known class, or one whose digest is missing, may be honest whatever it sent. Below r' the file provably had a
    Byzantine majority (at least r - r' + 1 of its r holders), so no sketch can win it honestly: it is dropped
    without a sketch round and lowers the aggregator's s (ByzShield's guarantee counts it among c_max(q))."""
    per_class: dict[str, dict[bytes, int]] = {}
    bound = 0
    for worker in holders:
        cls = class_of(worker)
        digest = replies.get(worker)
        if digest is None or cls == UNKNOWN_CLASS:
            bound += 1
            continue
        counts = per_class.setdefault(cls, {})
        counts[digest] = counts.get(digest, 0) + 1
    return bound + sum(max(counts.values()) for counts in per_class.values())


def blame(exact: FileVote[bytes], answers: Mapping[int, SketchReply], excusable: set[int],
          tolerance: float) -> FileVote[bytes]:
    """An exact winner stands. An ``excusable`` loser (another determinism class) whose sketch agrees with a
    winner's (all winners committed one vector, so any one's sketch will do) agrees: a replica of another class
    within the tolerance is not blamed. One whose own sketch, or every winner's, is missing is neither agreeing nor
    outvoted (the caller reports who was slow: silence absolves nobody). Every other loser is outvoted."""
    reference = next((answers[w] for w in exact.holders if w in answers and answers[w].finite), None)
    absolved = {w for w in excusable if w in answers and reference is not None
                and agree(answers[w], reference, tolerance)}
    unresolved = {w for w in excusable if w not in answers or reference is None}
    agreeing = tuple(sorted(set(exact.holders) | absolved))
    disagreeing = tuple(w for w in exact.disagreeing if w not in absolved and w not in unresolved)
    return FileVote(exact.file, exact.winner, agreeing, disagreeing, exact.absent)


def unanswered(exact: FileVote[bytes], excusable: set[int], answers: Mapping[int, SketchReply]) -> set[int]:
    """Who was slow in the blame of a file decided by an exact winner: the excusable losers that sent no sketch, or,
    when no winner sketched (the losers cannot be judged then), the winners."""
    winners = set(exact.holders)
    if winners & set(answers):
        return excusable - set(answers)
    return winners


def as_digest_vote(sketched: FileVote[int], replies: Mapping[int, bytes]) -> FileVote[bytes]:
    winner = replies[sketched.winner] if sketched.winner is not None else None
    return FileVote(sketched.file, winner, sketched.holders, sketched.disagreeing, sketched.absent)
