"""Collecting one step's digests from the agents.

Agents send one DIGESTS message per file as soon as that file is computed. The collector parses each
(:func:`wire.messages.parse_digest_report`: a digest of the right size, a finite loss or none, a bounded compute time),
checks it against what the PS expects (the current step, a file the sender holds and has not reported), records it,
and signals when every expected reply is in. An agent that disconnects stops being expected; its missing replies are
erasures for the vote, and it is remembered as lost for the step's accounting.

Streaming vote: as soon as ``r_prime`` equal digests of a file are in, that digest has won (a strict majority of the r
holders, so no other value can reach r'), and ``on_winner(file, digest, holders)`` is called at once, so the PS
can fetch the file while other workers are still computing (Konstantinidis and Ramamoorthy, MLSys 2021, Sec. 3).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Container
from typing import Any

from wire.errors import MessageError
from wire.messages import DigestReport, parse_digest_report


class DigestRejected(Exception):
    """A DIGESTS message that no honest agent would send (the PS drops that agent)."""


class StepCollector:
    """The digests of one step: per file, worker -> digest; per worker, reported losses and compute time."""

    def __init__(self, step: int, num_files: int, expected: dict[int, tuple[int, ...]], *, r_prime: int | None = None,
                 on_winner: Callable[[int, bytes, tuple[int, ...]], None] | None = None) -> None:
        self.step = step
        self.replies: list[dict[int, bytes]] = [{} for _ in range(num_files)]
        self.losses: dict[int, list[float]] = {}
        self.compute_s: dict[int, float] = {}
        self.lost: set[int] = set()  # workers that disconnected with replies still missing
        self.decided: dict[int, bytes] = {}  # file -> digest that reached r' (streaming vote)
        self._missing: dict[int, set[int]] = {w: set(files) for w, files in expected.items() if files}
        self._r_prime = r_prime
        self._on_winner = on_winner
        self._num_files = num_files
        self._started = time.monotonic()
        self.finished_at: dict[int, float] = {}  # worker -> monotonic time of its last expected digest
        self.complete = asyncio.Event()
        self.all_decided = asyncio.Event()  # every file has its winner (the streaming vote)
        self.worker_finished = asyncio.Event()  # set each time a worker sends its last digest or is dropped
        self.digest_in = asyncio.Event()  # set on every digest recorded and every worker dropped
        self._check_complete()

    def add(self, worker: int, header: dict[str, Any]) -> bool:
        """Record one DIGESTS header from ``worker`` (see :meth:`record`); a malformed one is DigestRejected."""
        try:
            report = parse_digest_report(header)
        except MessageError as exc:
            raise DigestRejected(str(exc)) from None
        return self.record(worker, report)

    def record(self, worker: int, report: DigestReport) -> bool:
        """Record one parsed DIGESTS from ``worker``. Returns False for a stale step (ignored), True when recorded;
        raises DigestRejected for a future step or a file this worker does not owe."""
        step, digest = report.step, report.digest
        if step != self.step:
            if step > self.step:
                raise DigestRejected(f"DIGESTS for future step {step} (current {self.step})")
            return False
        file, missing = self._expected(worker, report.file)
        self.replies[file][worker] = digest
        self._check_decided(file, digest)
        if report.loss is not None:
            self.losses.setdefault(worker, []).append(report.loss)
        self.compute_s[worker] = self.compute_s.get(worker, 0.0) + report.seconds
        missing.discard(file)
        self.digest_in.set()
        if not missing:
            del self._missing[worker]
            self.finished_at[worker] = time.monotonic()
            self.worker_finished.set()
        self._check_complete()
        return True

    def _expected(self, worker: int, file: int) -> tuple[int, set[int]]:
        """``file`` and the files ``worker`` still owes this step, when ``file`` is one of them; DigestRejected
        otherwise."""
        missing = self._missing.get(worker)
        if missing is None or file not in missing:
            if 0 <= file < len(self.replies) and worker in self.replies[file]:
                raise DigestRejected(f"second digest for file {file} of step {self.step}")
            raise DigestRejected(f"digest for file {file!r}, which worker {worker} does not hold or was not asked")
        return file, missing

    def worker_done(self, worker: int) -> bool:
        return worker not in self._missing

    def drop_worker(self, worker: int) -> None:
        """``worker`` is gone: stop waiting for it (its digests so far still count; it is erased for the step)."""
        if self._missing.pop(worker, None):
            self.lost.add(worker)
            self.worker_finished.set()
            self.digest_in.set()
        self._check_complete()

    @property
    def finish_times(self) -> list[float]:
        """Seconds from the start to each finished worker's last expected digest, in the order they finished."""
        return [at - self._started for at in self.finished_at.values()]

    def undecided_owing(self, excused: Container[int] = ()) -> set[int]:
        """The files without a winner that are still owed a digest by a worker not in ``excused`` and have fewer
        than r' digests in (a file with r' digests in can be voted on those: the sketch vote needs r' agreeing; one
        owed only by excused workers is voted without them)."""
        if self._r_prime is None:
            return {f for owed in self._missing.values() for f in owed}
        owed_by = {f for w, owed in self._missing.items() if w not in excused for f in owed}
        return {f for f in owed_by if f not in self.decided and len(self.replies[f]) < self._r_prime}

    def waiting_on(self, excused: Container[int] = ()) -> set[int]:
        """The workers not in ``excused`` still owing a digest of a file without a winner."""
        return {w for w, owed in self._missing.items()
                if w not in excused and any(f not in self.decided for f in owed)}

    def _check_decided(self, file: int, digest: bytes) -> None:
        if self._r_prime is None or file in self.decided:
            return
        holders = tuple(sorted(w for w, d in self.replies[file].items() if d == digest))
        if len(holders) >= self._r_prime:
            self.decided[file] = digest
            if self._on_winner is not None:
                self._on_winner(file, digest, holders)
            if len(self.decided) == self._num_files:
                self.all_decided.set()

    def missing_workers(self) -> tuple[int, ...]:
        return tuple(sorted(self._missing))

    def _check_complete(self) -> None:
        if not self._missing:
            self.complete.set()

