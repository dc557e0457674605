"""The vector arithmetic of the Byzantine behaviours: pure functions of a float32 gradient and small integers (numpy
and the wire digest only), so a synthetic agent that regenerates a gradient regenerates the same lie bit for bit.

Every offset is ``rel * ||g|| * u`` with ``u`` a unit vector drawn from ``numpy.random.default_rng`` keyed by a tag
and the integers that say what it depends on (nothing: a fixed direction; (step, file); (worker, step, file)),
computed in float64 and added as float32.
"""
from __future__ import annotations

import functools

import numpy as np

from byzantine.sketch import l2_norm
from wire import digest_bytes

#: Tags of the random directions (one per behaviour, so no two lies share a direction by accident).
DEVIATION_TAG = 0x44455649
HIDER_TAG = 0x48494445
OTHER_CLASS_TAG = 0x4F544852
DROPPER_TAG = 0x44524F50
PROBE_TAG = 0x50524F42


def direction(d: int, *key: int) -> np.ndarray:
    """A unit vector of R^d (float64), a pure function of ``key``."""
    u = np.random.default_rng(list(key)).standard_normal(d)
    u /= float(np.linalg.norm(u))
    return u


@functools.lru_cache(maxsize=8)
def _base(d: int, tag: int, worker: int) -> np.ndarray:
    base = direction(d, tag, worker).astype(np.float32)
    base.flags.writeable = False
    return base


def rolled_direction(d: int, tag: int, worker: int, step: int, file: int) -> np.ndarray:
    """A unit vector of R^d that is a pure function of its key, like :func:`direction`, but cheap per (step, file):
    one keyed direction per worker, rotated by a shift keyed by (step, file) (a copy of d float32 instead of d normal
    draws). Two keys' vectors are near orthogonal. The dropper sends one per file it holds; drawn afresh, they cost
    the in-process benches' shared cores more than the PS's whole vote."""
    shift = 1 + int(np.random.default_rng([tag, worker, step, file]).integers(d - 1)) if d > 1 else 0
    return np.roll(_base(d, tag, worker), shift)


def offset_rolled(gradient: np.ndarray, rel: float, *key: int) -> np.ndarray:
    """:func:`offset` by ``rel * ||g||`` along :func:`rolled_direction` of ``key`` (tag, worker, step, file), in
    float32 throughout (a dropper's garbage needs no float64 care)."""
    u = rolled_direction(gradient.shape[0], *key)
    u *= np.float32(rel * l2_norm(gradient))
    gradient += u
    return gradient


def offset(gradient: np.ndarray, rel: float, u: np.ndarray) -> np.ndarray:
    """Add ``rel * ||g|| * u`` to ``gradient`` in place (``u`` a unit vector of its length) and return it."""
    gradient += (u * (rel * l2_norm(gradient))).astype(np.float32)
    return gradient


def deviate(gradient: np.ndarray, deviation: float, step: int, file: int, tag: int = DEVIATION_TAG) -> np.ndarray:
    """Add ``deviation * ||g|| * u`` in place, u a unit vector that is a pure function of (tag, step, file)."""
    return offset(gradient, deviation, direction(gradient.shape[0], tag, step, file))


def nudge(gradient: np.ndarray, index: int) -> np.ndarray:
    """Move coordinate ``index mod d`` one float32 ulp up: a vector no other holder has, indistinguishable from the
    honest one by any tolerance."""
    i = index % gradient.shape[0]
    gradient[i] = np.nextafter(gradient[i], np.float32(np.inf))
    return gradient


def _leading(digest: bytes, bits: int, high: bool) -> bool:
    top = int.from_bytes(digest[:4], "big") >> (32 - bits)
    return top == ((1 << bits) - 1 if high else 0)


def grind(gradient: np.ndarray, zero_bits: int = 12, *, high: bool = False) -> np.ndarray:
    """Nudge the last coordinate one ulp at a time until the digest starts with ``zero_bits`` zero bits (``high``:
    one bits): a liar that wants to be the centre of its group (ties go to the smallest digest), or never to be it.
    Each try hashes the whole vector: about 2^bits hashes."""
    limit = 1 << (zero_bits + 6)
    for _ in range(limit):
        if _leading(digest_bytes(gradient.data.cast("B")), zero_bits, high):
            return gradient
        gradient[-1] = np.nextafter(gradient[-1], np.float32(np.inf))
    return gradient


def scale(gradient: np.ndarray, factor: float) -> np.ndarray:
    """``factor * g`` in place (float32 arithmetic; NaN makes every coordinate NaN)."""
    gradient *= np.float32(factor)
    return gradient


def negate(payload: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``-1 * payload`` (a new array, or into ``out``): a payload that no longer hashes to the digest sent."""
    return np.multiply(payload, np.float32(-1.0), out=out)
