"""The audit of ``--vote auto``: one keyed-random check per step of a sketch the PS had no reason to verify.

In a disputed file decided by an exact r' majority, the other holders' sketches only decide who is blamed: a holder
whose sketch agrees with the winners counts as agreeing, and its payload is never fetched. A holder that sketches
one vector and commits another would never be caught. Each step the PS therefore picks one such holder (*candidate*:
its sketch agreed, its digest differs from the winner's, the PS never checked its payload) by a hash keyed with the
PS's secret and the step's sketch seed, both unknown to the agents when they commit, fetches its payload, and
recomputes its sketch: a payload that does not hash to its digest, or whose sketch differs, proves a lie.

A holder that lies in c of the N candidates of a step is caught with probability c/N per step. Cost per audited step:
one payload of ingress (1/f of the step's, about 4 % at f = 25) and one sketch recomputation (k multiply-adds per
coordinate: ~20 ms for LeNet, ~0.5 s for ResNet-18 on one core), run beside the aggregation and waited for at most
one hedge delay after it; a candidate that does not deliver by then is ``slow``.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from shield_ps.byzantine.sketch import SketchParams, SketchReply, check_payload
from shield_ps.byzantine.vote import FileVote
from shield_ps.phases.fetch import Fetcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    file: int
    worker: int
    digest: bytes


def candidates(files: Sequence[FileVote[bytes]], replies: Sequence[Mapping[int, bytes]],
               answers: Sequence[Mapping[int, SketchReply]], split: set[int]) -> list[Candidate]:
    """Holders counted as agreeing on the strength of their sketch alone (see the module docstring)."""
    out = []
    for file_vote in files:
        if file_vote.winner is None or file_vote.file in split:
            continue
        for worker in file_vote.holders:
            digest = replies[file_vote.file].get(worker)
            if digest is not None and digest != file_vote.winner and worker in answers[file_vote.file]:
                out.append(Candidate(file_vote.file, worker, digest))
    return out


def pick(found: Sequence[Candidate], secret: bytes, seed: bytes) -> Candidate | None:
    """The candidate with the smallest hash keyed by ``secret`` over the step's ``seed`` and its (file, worker)."""
    def key(c: Candidate) -> bytes:
        return hashlib.blake2b(seed + c.file.to_bytes(4, "big") + c.worker.to_bytes(4, "big"), key=secret[:64],
                               digest_size=16).digest()

    return min(found, key=key, default=None)


class Audit:
    """Fetches and checks one candidate's payload (started after the vote, settled before the step's accounting)."""

    def __init__(self, fetcher: Fetcher, d: int, params: SketchParams) -> None:
        self._fetcher, self._params = fetcher, params
        self._buffer = np.empty(d, dtype=np.float32)
        self.task: asyncio.Task[None] | None = None
        self.target: Candidate | None = None
        self.verdict: str | None = None  # "lying", "slow" or "clean" once settled

    def start(self, target: Candidate, claimed: SketchReply, seed: bytes) -> None:
        self.target, self.verdict = target, None
        fetch = self._fetcher.start_payload(target.file, target.digest, lambda: (target.worker,), self._buffer)
        self.task = asyncio.get_running_loop().create_task(self._check(fetch, claimed, seed))

    async def _check(self, fetch: asyncio.Task[None], claimed: SketchReply, seed: bytes) -> None:
        await fetch
        assert self.target is not None
        if (self.target.file, self.target.digest) not in self._fetcher.report.payloads:
            self.verdict = "lying" if self.target.worker in self._fetcher.report.lying else "slow"
            return
        why = await asyncio.get_running_loop().run_in_executor(
            None, check_payload, self._buffer, claimed, seed, self._params)
        self.verdict = "clean" if why is None else "lying"
        if why is not None:
            log.warning("audit: worker %d lied about file %d: %s", self.target.worker, self.target.file, why)

    async def settle(self, grace: float) -> Candidate | None:
        """Wait at most ``grace`` more; returns the audited candidate (its :attr:`verdict` set) or None."""
        if self.task is None:
            return None
        task, self.task = self.task, None
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except asyncio.TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self.verdict = "slow"
        return self.target
