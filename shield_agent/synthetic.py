"""Synthetic compute, for benchmarks and tests only: deterministic pseudo-gradients of any size, without torch.

A synthetic job (``shield-ps serve --synthetic-d D``; agents ``shield-agent join --synthetic SECONDS_PER_FILE``)
trains a flat vector of D float32 parameters on the gradient of a quadratic plus noise: file ``i`` of step ``t`` at
parameters ``p`` is

    g = DECAY * p + tile(noise(seed, t, i))

where ``noise`` is :data:`NOISE_PERIOD` standard normal float32 values from ``numpy.random.default_rng`` seeded by
``(seed, t, i)`` and ``tile`` repeats them over D coordinates. Every operation is element-wise IEEE float32, so the
result is a pure function of (p, t, i, seed, D) and honest replicas agree bit for bit on any machine; the PS can
simulate attacks on these vectors as on real ones. Most bytes come from ``p`` (which the training makes
incompressible, as real gradients are), so codecs see realistic data. A file takes at least ``delay`` seconds
(the generation is a few milliseconds per million parameters; the rest is a sleep), which stands for the forward
and backward pass of a real model. Nothing here is meant for training anything real.

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
import math
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import numpy as np

from shield_agent.adversary import HONEST, Adversary
from shield_agent.errors import ComputeError
from shield_agent.sketching import answers as sketch_answers
from wire import digest_bytes
from wire.sketch import SketchAnswer, SketchRequest

#: Length of the repeated noise pattern (a prime, so it never lines up with chunk or block sizes).
NOISE_PERIOD = 65_521
#: Curvature of the quadratic: the parameters decay towards 0 by lr * DECAY per step.
DECAY = np.float32(0.01)
#: Scale of the initial parameters.
INIT_SCALE = np.float32(0.05)
#: Domain-separation tags of the two random streams.
INIT_TAG = 0x53594E49
NOISE_TAG = 0x53594E4E
#: Largest synthetic model, parameters (4 GiB of float32).
MAX_SYNTHETIC_D = 1 << 30
#: Steps per "epoch" of a synthetic job (it has no dataset; this only sets the epoch counter).
STEPS_PER_EPOCH = 1000


def check_dimension(d: object) -> int:
    """``d`` as an int if it is in 1..MAX_SYNTHETIC_D, else ComputeError."""
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= MAX_SYNTHETIC_D:
        raise ComputeError(f"synthetic dimension must be an integer in 1..{MAX_SYNTHETIC_D}, got {d!r}")
    return int(d)


def initial_parameters(d: int, seed: int) -> np.ndarray:
    """The synthetic job's initial parameters: D float32 normals scaled by INIT_SCALE, from ``(seed, INIT_TAG)``."""
    out = np.random.default_rng([INIT_TAG, seed]).standard_normal(check_dimension(d), dtype=np.float32)
    out *= INIT_SCALE
    return out


def file_noise(seed: int, step: int, file: int) -> np.ndarray:
    """The NOISE_PERIOD float32 noise values of ``file`` at ``step``."""
    return np.random.default_rng([NOISE_TAG, seed, step, file]).standard_normal(NOISE_PERIOD, dtype=np.float32)


def synthetic_gradient(params: np.ndarray, step: int, file: int, seed: int, out: np.ndarray) -> np.ndarray:
    """Write ``DECAY * params + tile(file_noise(seed, step, file))`` into ``out`` and return it."""
    if params.dtype != np.float32 or out.dtype != np.float32 or params.shape != out.shape or params.ndim != 1:
        raise ComputeError(f"synthetic gradient: params and out must be float32 vectors of one shape, got "
                           f"{params.dtype}{params.shape} and {out.dtype}{out.shape}")
    np.multiply(params, DECAY, out=out)
    noise = file_noise(seed, step, file)
    d = out.shape[0]
    for start in range(0, d, NOISE_PERIOD):
        stop = min(start + NOISE_PERIOD, d)
        out[start:stop] += noise[: stop - start]
    return out


@dataclass(frozen=True)
class SyntheticResult:
    """What :meth:`SyntheticComputer.file_gradient` returns (the fields the agent reads of a real FileGradient)."""

    gradient: np.ndarray
    loss: float
    seconds: float


class SyntheticComputer:
    """Drop-in for :class:`shield_agent.compute.GradientComputer` in a synthetic job (benchmarks, tests)."""

    def __init__(self, d: int, seed: int, delay: float) -> None:
        if not (isinstance(delay, (int, float)) and 0 <= delay <= 3600):
            raise ComputeError(f"synthetic delay must be in 0..3600 seconds per file, got {delay!r}")
        self.num_params = check_dimension(d)
        self.seed = seed
        self.delay = float(delay)
        self.steps_per_epoch = STEPS_PER_EPOCH

    def initial_parameters(self) -> np.ndarray:
        return initial_parameters(self.num_params, self.seed)

    def environment(self, threads: int) -> dict[str, str | int]:
        """The determinism fingerprint's environment of a synthetic agent (no torch: numpy alone computes)."""
        return {"device": "synthetic", "numpy": np.__version__, "threads": int(threads)}

    def loss(self, params: np.ndarray) -> float:
        """The quadratic's loss at ``params`` (what the agent reports with a digest)."""
        return 0.5 * float(DECAY) * float(np.dot(params, params)) / self.num_params

    def file_gradient(self, params: np.ndarray, step: int, file: int,
                      out: np.ndarray | None = None, *, wait: bool = True) -> SyntheticResult:
        """The synthetic gradient of ``file`` at ``step``, ready no sooner than ``delay`` seconds after the call
        (at once with ``wait=False``: a regeneration, or a caller that waits itself)."""
        started = time.perf_counter()
        if out is None:
            out = np.empty(self.num_params, dtype=np.float32)
        synthetic_gradient(params, step, file, self.seed, out)
        if not wait:
            return SyntheticResult(out, math.nan, time.perf_counter() - started)
        loss = self.loss(params)
        left = self.delay - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)
        return SyntheticResult(out, loss, time.perf_counter() - started)


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
        digest = digest_bytes(memoryview(out).cast("B"))
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
