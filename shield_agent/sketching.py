"""The agent's side of the commit-then-sketch round, and the testing-only lies that exercise it.

When the PS sends SKETCH for step t (the seed is revealed only after our digests were sent, so we are committed),
we sketch each named file's gradient, the very vector our digest covers, and send one SKETCH per file. A file we have
not computed for step t is answered with an ERROR (the PS treats it as an erasure for that file).

Testing only (real Byzantine agents for end-to-end tests): ``deviation`` adds a fixed random direction of relative
norm ``deviation`` to every gradient before its digest; with ``lie_sketch`` the agent sketches its honest gradient
instead of the vector it committed to, and grinds that vector's digest small so that it becomes its group's center
(ties go to the smallest digest); the PS fetches its payload and proves the lie.
"""
from __future__ import annotations

import numpy as np

from shield_ps.byzantine.sketch import SketchParams, l2_norm, sketch_many
from wire.sketch import SketchAnswer, SketchRequest

DEVIATION_TAG = 0x44455649


def deviate(gradient: np.ndarray, deviation: float, step: int, file: int) -> np.ndarray:
    """Add ``deviation * ||g|| * u`` in place, u a unit vector that is a pure function of (step, file)."""
    direction = np.random.default_rng([DEVIATION_TAG, step, file]).standard_normal(gradient.shape[0])
    direction *= deviation * l2_norm(gradient) / float(np.linalg.norm(direction))
    gradient += direction.astype(np.float32)
    return gradient


def grind(gradient: np.ndarray, zero_bits: int = 12) -> np.ndarray:
    """Nudge the last coordinate one ulp at a time until the digest starts with ``zero_bits`` zero bits: a liar that
    wants to be the center of its group (ties go to the smallest digest) and so have its payload taken."""
    from wire import digest_bytes

    limit = 1 << (zero_bits + 6)
    for _ in range(limit):
        if int.from_bytes(digest_bytes(memoryview(gradient).cast("B"))[:4], "big") >> (32 - zero_bits) == 0:
            return gradient
        gradient[-1] = np.nextafter(gradient[-1], np.float32(np.inf))
    return gradient


def answers(request: SketchRequest, gradients: dict[int, np.ndarray]) -> list[SketchAnswer]:
    """Sketch every file of ``request`` found in ``gradients`` (one pass over G for all of them); a non-finite
    gradient gets ``sketch=None``. Runs off the event loop."""
    params = SketchParams(rows=request.rows, width=request.width)
    finite = [f for f in request.files if f in gradients and np.isfinite(gradients[f]).all()]
    sketches = dict(zip(finite, sketch_many([gradients[f] for f in finite], request.seed, params)))
    out = []
    for f in request.files:
        if f not in gradients:
            continue
        if f in sketches:
            out.append(SketchAnswer(request.step, f, sketches[f].astype("<f8").tobytes(), l2_norm(gradients[f])))
        else:
            out.append(SketchAnswer(request.step, f, None, None))
    return out
