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
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from shield_model.errors import ComputeError

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
    """Drop-in for :class:`shield_model.compute.GradientComputer` in a synthetic job (benchmarks, tests)."""

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
