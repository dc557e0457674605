"""The audit of ``--vote auto``: one keyed-random check per step of a sketch the PS had no reason to verify.

In a disputed file decided by an exact r' majority, the other holders' sketches only decide who is blamed: a holder
of another determinism class whose sketch agrees with the winners counts as agreeing, and its payload is never
fetched. A holder that sketches one vector and commits another would never be caught. Each step the PS therefore
picks one such holder (*candidate*: it lost to an exact winner, it is of another class, the PS never checked its
payload) by a hash keyed with the PS's secret and the step's sketch seed, both unknown to the agents when they
commit, and fetches its payload at once (the sketches of such files are not waited for). At the end of the step, if
the candidate's sketch came and agreed (it is counted as agreeing), the PS recomputes it: a payload that does not
hash to its digest, or whose sketch differs, proves a lie.

A holder that lies in c of the N candidates of a step is caught with probability c/N per step. Cost per audited step:
one payload of ingress (1/f of the step's, about 4 % at f = 25) and one sketch recomputation (k multiply-adds per
coordinate: ~20 ms for LeNet, ~0.5 s for ResNet-18 on one core), run beside the aggregation and waited for at most
one hedge delay after it; a candidate that does not deliver by then is ``slow``.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from byzantine.sketch import SketchParams, SketchReply, check_payload
from shield_ps.phases.fetch import Fetcher
from shield_ps.phases.vote import VoteOutcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    file: int
    worker: int
    digest: bytes


def candidates(excusable: Mapping[int, set[int]], replies: Sequence[Mapping[int, bytes]]) -> list[Candidate]:
    """The holders that lost to an exact winner and may be absolved by their sketch (see the module docstring)."""
    return [Candidate(file, worker, replies[file][worker]) for file, workers in sorted(excusable.items())
            for worker in sorted(workers) if worker in replies[file]]


def pick(found: Sequence[Candidate], secret: bytes, seed: bytes) -> Candidate | None:
    """The candidate with the smallest hash keyed by ``secret`` over the step's ``seed`` and its (file, worker)."""
    def key(c: Candidate) -> bytes:
        return hashlib.blake2b(seed + c.file.to_bytes(4, "big") + c.worker.to_bytes(4, "big"), key=secret[:64],
                               digest_size=16).digest()

    return min(found, key=key, default=None)


class Audit:
    """Fetches one candidate's payload (started after the vote) and checks it against its sketch at the step's end."""

    def __init__(self, fetcher: Fetcher, d: int, params: SketchParams) -> None:
        self._fetcher, self._params = fetcher, params
        self._buffer = np.empty(d, dtype=np.float32)
        self.task: asyncio.Task[None] | None = None
        self.target: Candidate | None = None
        self.verdict: str | None = None  # "lying", "slow", "clean" or "moot" (its sketch disagreed or never came)

    def begin(self, excusable: Mapping[int, set[int]], replies: Sequence[Mapping[int, bytes]], secret: bytes,
              seed: bytes) -> None:
        """After the vote: start fetching the payload of the candidate :func:`pick` names, if there is one."""
        target = pick(candidates(excusable, replies), secret, seed)
        if target is not None:
            self.start(target)

    async def conclude(self, grace: float, outcome: VoteOutcome, seed: bytes) -> tuple[set[int], set[int]]:
        """Once the step's blame is final: the audit's verdict as (lying, slow) workers (both empty when nothing
        was audited, or the candidate was clean or moot)."""
        target = self.target
        if self.task is None or target is None:
            return set(), set()
        absolved = target.worker in outcome.vote.files[target.file].holders
        claimed = outcome.answers[target.file].get(target.worker) if outcome.answers else None
        await self.settle(grace, claimed, absolved, seed)
        if self.verdict == "lying":
            return {target.worker}, set()
        return (set(), {target.worker}) if self.verdict == "slow" else (set(), set())

    def start(self, target: Candidate) -> None:
        self.target, self.verdict = target, None
        self.task = self._fetcher.start_payload(target.file, target.digest, lambda: (target.worker,), self._buffer)

    async def settle(self, grace: float, claimed: SketchReply | None, absolved: bool, seed: bytes) -> Candidate | None:
        """Wait for the payload at most ``grace`` more; then judge it when its holder was absolved by ``claimed``.
        Returns the audited candidate (its :attr:`verdict` set) or None when nothing was audited."""
        if self.task is None or self.target is None:
            return None
        task, self.task = self.task, None
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except asyncio.TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        target = self.target
        if (target.file, target.digest) not in self._fetcher.report.payloads:
            self.verdict = "lying" if target.worker in self._fetcher.report.lying else "slow"
        elif not absolved or claimed is None:
            self.verdict = "moot"
        else:
            why = await asyncio.get_running_loop().run_in_executor(
                None, check_payload, self._buffer, claimed, seed, self._params)
            self.verdict = "clean" if why is None else "lying"
            if why is not None:
                log.warning("audit: worker %d lied about file %d: %s", target.worker, target.file, why)
        return target
