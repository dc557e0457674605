"""A synthetic worker slot (``shield-agent join --synthetic``; benchmarks and tests only): the agent's side of
:mod:`shield_model.synthetic`.

A synthetic worker slot stores no gradients (:class:`LazyFiles`): it computes a file into its compute thread's one
scratch vector to digest it, and computes it again into the slot's one payload vector when the PS fetches or sketches
it. That is exact because the vector is a pure function of (the step's parameters, step, file, seed, D) and a
Byzantine agent's commits (pure functions of the vector, step, file and worker: shield_agent.adversary), and the slot
keeps step t's parameters until STEP t+2. A slot thus holds 3 vectors of D (two parameter vectors and the payload)
plus one per compute thread of its process, whatever its number of files l, instead of 2 + l.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from shield_agent.adversary import HONEST, Adversary
from shield_agent.sketching import answers as sketch_answers
from shield_model.errors import ComputeError
from shield_model.synthetic import SyntheticComputer
from wire import digest_bytes
from wire.sketch import SketchAnswer, SketchRequest


@dataclass(frozen=True)
class SyntheticDigest:
    """What :meth:`LazyFiles.digest` returns: the file's digest, with what the agent reports of a computation."""

    digest: bytes
    loss: float
    seconds: float


_scratch = threading.local()


def _thread_scratch(d: int) -> np.ndarray:
    """This thread's one scratch vector of ``d`` float32 (kept for the thread's life: pool threads reuse it)."""
    buffer = getattr(_scratch, "vector", None)
    if buffer is None or buffer.shape[0] != d:
        buffer = _scratch.vector = np.empty(d, np.float32)
    return buffer


class LazyFiles:
    """A synthetic worker slot's gradients, never stored (see the module's docstring).

    :meth:`digest` runs on the compute pool and uses that thread's scratch vector; :meth:`payload` and
    :meth:`sketches` regenerate into the slot's one payload vector, one at a time (a lock), off the compute pool
    (whose threads sleep out the synthetic delay). Both recompute ``committed``: the gradient, then the adversary's
    commits (worker ``worker``'s)."""

    def __init__(self, computer: SyntheticComputer, adversary: Adversary = HONEST, worker: int = 0) -> None:
        self.computer = computer
        self.adversary = adversary
        self.worker = worker
        self._payload: np.ndarray | None = None
        self._lock = asyncio.Lock()

    def committed(self, params: np.ndarray, step: int, file: int, out: np.ndarray, *,
                  honest: bool = False) -> np.ndarray:
        """The vector the slot digests for ``file`` at ``step`` (with ``honest``: the one a sketch-liar sketches)
        written into ``out``: the synthetic gradient, then the adversary's commits (up to the sketch-liar's)."""
        self.computer.file_gradient(params, step, file, out, wait=False)
        if self.adversary.commits:
            self.adversary.commit(out, step, file, self.worker, upto=self.adversary.sketch_stage if honest else None)
        return out

    def digest(self, params: np.ndarray, step: int, file: int) -> SyntheticDigest:
        """Compute ``file`` into this thread's scratch and digest it; no sooner than the computer's delay."""
        started = time.perf_counter()
        out = self.committed(params, step, file, _thread_scratch(self.computer.num_params))
        digest = digest_bytes(out.data.cast("B"))
        loss = self.computer.loss(params)
        left = self.computer.delay - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)
        return SyntheticDigest(digest, loss, time.perf_counter() - started)

    def _buffer(self) -> np.ndarray:
        if self._payload is None:
            self._payload = np.empty(self.computer.num_params, np.float32)
        return self._payload

    def _fill_payload(self, params: np.ndarray, step: int, file: int) -> np.ndarray:
        out = self.committed(params, step, file, self._buffer())
        if self.adversary.forges:  # the same operation as the stored path's forge (NaN signs included)
            self.adversary.forge(out, out)
        return out

    @contextlib.asynccontextmanager
    async def payload(self, params: np.ndarray, step: int, file: int,
                      current: Callable[[], bool]) -> AsyncIterator[np.ndarray | None]:
        """The FETCH payload of ``file`` at ``step``, regenerated from ``params`` and held (no other regeneration
        until the block ends: send it inside). None when ``current()`` is false after the regeneration: the
        caller's check that ``params`` still holds step ``step``'s parameters (else it may hold a torn mix, and the
        only right answer is not_ready)."""
        async with self._lock:
            if not current():
                yield None
                return
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(None, self._fill_payload, params, step, file)
            yield out if current() else None

    async def sketches(self, params: np.ndarray, request: SketchRequest, files: list[int],
                       current: Callable[[], bool]) -> list[SketchAnswer]:
        """The SKETCH answers for ``files`` (computed at ``request.step`` from ``params``), one file at a time in
        the payload vector, in ``request.files``' order; [] when ``current()`` turns false meanwhile. A sketch-liar
        sketches the vector it had before its own commit."""
        loop = asyncio.get_running_loop()
        out: list[SketchAnswer] = []
        async with self._lock:
            for file in (f for f in request.files if f in files):
                answer = await loop.run_in_executor(None, self._sketch_one, params, request, file)
                if not current():
                    return []
                out.extend(answer)
        return out

    def _sketch_one(self, params: np.ndarray, request: SketchRequest, file: int) -> list[SketchAnswer]:
        vector = self.committed(params, request.step, file, self._buffer(),
                                honest=self.adversary.sketch_stage is not None)
        return sketch_answers(request, {file: vector})


def lazy_files(computer: object, adversary: Adversary, worker: int) -> LazyFiles | None:
    """Worker ``worker``'s :class:`LazyFiles` (with its session's ``adversary``) when ``computer`` is synthetic;
    None for a real (torch) computer."""
    if not isinstance(computer, SyntheticComputer):
        return None
    return LazyFiles(computer, adversary, worker)


def make_computer(job_d: int | None, delay: float | None, seed: int) -> SyntheticComputer | None:
    """The agent's computer for a job: a SyntheticComputer when the PS runs a synthetic job (``job_d``) and the
    agent was started with ``--synthetic`` (``delay``), None for a real job on a real agent; ComputeError when one
    side is synthetic and the other not."""
    if job_d is None and delay is None:
        return None
    if job_d is None:
        raise ComputeError("this agent was started with --synthetic, but the PS runs a real job; join without it")
    if delay is None:
        raise ComputeError("the PS runs a synthetic job (--synthetic-d, benchmarks and tests only); join with "
                           "--synthetic SECONDS_PER_FILE")
    return SyntheticComputer(job_d, seed, delay)
