"""The sketch vote's tolerance from probe evidence that no single agent controls (docs/byzantine.md, "Tolerance").

Every agent reports, at JOB, the digest of one canonical gradient (the *probe*: file 0 of step 0 at the job's initial
parameters) and its sketch under a seed the PS chose. Agents with equal probe digests are one determinism class; the
honest spread between classes sets the tolerance tau of the sketch vote. A probe is a claim, so it counts only as far
as someone vouches for it:

* the PS computes the probe itself (:class:`Reference`): its digest, sketch and norm are the truth for its own
  class, and a member of that class that reports another sketch or norm is proven to lie (same digest, same vector,
  same sketch: the sketch is exact arithmetic, :mod:`byzantine.sketch`);
* another class's probe is *attested* when ``quorum`` of its members report the same sketch and norm
  (``quorum = max(r', q + 1)``: at least one honest member among them when at most q agents are Byzantine);
* every other probe (a class smaller than the quorum, or a member contradicting its class) is *unattested*: it may
  widen tau to at most ``UNATTESTED_FACTOR`` = 1.5 times what the attested probes give (issue 26 asked for at most
  2x; the margin covers the sketch estimate's own spread from run to run, about +-9 % at k = 256).

The cap of tau follows the model: the PS also measures the relative distance D between the gradients of two different
files at the initial parameters, and tau never exceeds ``D / CAP_DIVISOR`` (the fixed 0.05 of earlier releases was
0.7 / 14, LeNet's D). The floor keeps the sketch's quantisation error under 5 % of tau.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from byzantine.errors import ByzantineConfigError
from byzantine.sketch import DEFAULT_PARAMS, NORM_RTOL, SketchParams, SketchReply, quantisation_error, relative_spread

#: tau is this multiple of the largest vouched-for probe spread between classes ...
SPREAD_FACTOR = 10.0
#: ... never above D / CAP_DIVISOR, D the PS's measured distance between two files' gradients ...
CAP_DIVISOR = 14.0
#: ... and, when the PS could not measure D, never above this.
DEFAULT_CAP = 0.05
#: ... and never below this (and never below 20 x the sketch's quantisation error at the model's size).
TOLERANCE_FLOOR = 1e-6
#: Unattested probes may widen tau at most this many times.
UNATTESTED_FACTOR = 1.5


@dataclass(frozen=True)
class Reference:
    """The PS's own probe: the digest and sketch of the probe gradient it computed, and ``file_distance``, the
    smallest relative distance between the gradients of two different files it computed (None: not measured)."""

    digest: bytes
    probe: SketchReply
    file_distance: float | None = None


@dataclass(frozen=True)
class ProbeClaim:
    """What one agent reported: its probe digest and its sketch reply (None: it sent no sketch)."""

    digest: bytes
    probe: SketchReply | None


@dataclass(frozen=True)
class ToleranceDecision:
    """The tolerance and how it was reached (for the ``classes`` event and the log)."""

    tolerance: float
    spread: float  # the largest vouched-for spread
    unattested_spread: float  # the largest spread with every probe counted
    cap: float
    floor: float
    liars: tuple[int, ...]  # workers whose probe contradicts the PS's own computation
    unattested: tuple[int, ...]  # workers whose probe nobody vouches for


def same_reply(a: SketchReply, b: SketchReply) -> bool:
    """Bit-identical sketches and norms within :data:`~byzantine.sketch.NORM_RTOL` (what two honest agents
    with one probe digest always send)."""
    if a.sketch is None or b.sketch is None or a.norm is None or b.norm is None:
        return a.sketch is None and b.sketch is None
    return bool((a.sketch == b.sketch).all()) and abs(a.norm - b.norm) <= NORM_RTOL * max(a.norm, b.norm, 1e-30)


def tolerance_floor(d: int, params: SketchParams = DEFAULT_PARAMS) -> float:
    return max(TOLERANCE_FLOOR, 20.0 * quantisation_error(d, params))


def tolerance_cap(d: int, file_distance: float | None, params: SketchParams = DEFAULT_PARAMS) -> float:
    """``file_distance / CAP_DIVISOR`` (at least the floor); :data:`DEFAULT_CAP` when the distance is unknown."""
    if file_distance is None or not math.isfinite(file_distance):
        return DEFAULT_CAP
    return max(tolerance_floor(d, params), file_distance / CAP_DIVISOR)


def clamp_tolerance(spread: float, floor: float, cap: float) -> float:
    return min(max(SPREAD_FACTOR * spread, floor), cap)


def check_override(override: float, d: int, params: SketchParams = DEFAULT_PARAMS) -> float:
    """``--vote-tol``: allowed in [floor, 0.5]; ByzantineConfigError otherwise."""
    floor = tolerance_floor(d, params)
    if not floor <= override <= 0.5:
        raise ByzantineConfigError(f"--vote-tol {override:g} must be in [{floor:.2g}, 0.5] at d={d} (below the floor "
                                   "the sketch's quantisation dominates; above 0.5 different files look alike)")
    return override


def decide_tolerance(claims: Mapping[int, ProbeClaim], d: int, *, quorum: int, reference: Reference | None = None,
                     params: SketchParams = DEFAULT_PARAMS) -> ToleranceDecision:
    """The tolerance from the agents' ``claims`` (worker -> claim), vouched for as the module docstring says."""
    floor, cap = tolerance_floor(d, params), tolerance_cap(d, reference.file_distance if reference else None, params)
    vouched: list[SketchReply] = [reference.probe] if reference is not None and reference.probe.finite else []
    unvouched: list[SketchReply] = []
    liars: list[int] = []
    unattested: list[int] = []
    by_digest: dict[bytes, list[int]] = {}
    for worker in sorted(claims):
        by_digest.setdefault(claims[worker].digest, []).append(worker)
    for digest, workers in by_digest.items():
        replies = {w: probe for w in workers if (probe := claims[w].probe) is not None}
        if reference is not None and digest == reference.digest:
            liars += [w for w, reply in replies.items() if not same_reply(reply, reference.probe)]
            continue
        attested = _attested_reply(replies, quorum)
        if attested is not None:
            vouched.append(attested)
        for worker, reply in replies.items():
            if attested is None or not same_reply(reply, attested):
                unattested.append(worker)
                unvouched.append(reply)
    spread = relative_spread(vouched)
    wide = relative_spread(vouched + unvouched)
    value = min(clamp_tolerance(wide, floor, cap), UNATTESTED_FACTOR * clamp_tolerance(spread, floor, cap))
    return ToleranceDecision(value, spread, wide, cap, floor, tuple(liars), tuple(sorted(unattested)))


def _attested_reply(replies: Mapping[int, SketchReply], quorum: int) -> SketchReply | None:
    """The reply that at least ``quorum`` of one class's members sent identically, if any."""
    counts: Counter[int] = Counter()
    firsts: dict[int, SketchReply] = {}
    for worker, reply in replies.items():
        match = next((key for key, first in firsts.items() if same_reply(first, reply)), None)
        if match is None:
            match = worker
            firsts[worker] = reply
        counts[match] += 1
    for key, count in counts.most_common():
        if count >= quorum:
            return firsts[key]
    return None


def attestation_quorum(r_prime: int, byzantine: int) -> int:
    """``max(r', q + 1)``: members of one class that must report one probe for it to count."""
    return max(r_prime, byzantine + 1)


def file_distance(gradients: Sequence[object]) -> float | None:
    """The smallest ||a - b|| / min(||a||, ||b||) over pairs of the given float32 gradients (None for fewer than two
    finite, non-zero ones)."""
    import numpy as np

    finite = [g for g in gradients if isinstance(g, np.ndarray) and np.isfinite(g).all() and np.any(g)]
    best: float | None = None
    for i in range(len(finite)):
        for j in range(i + 1, len(finite)):
            a, b = finite[i].astype(np.float64), finite[j].astype(np.float64)
            value = float(np.linalg.norm(a - b)) / min(float(np.linalg.norm(a)), float(np.linalg.norm(b)))
            best = value if best is None else min(best, value)
    return best
