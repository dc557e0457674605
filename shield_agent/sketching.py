"""The agent's side of the commit-then-sketch round.

When the PS sends SKETCH for step t (the seed is revealed only after our digests were sent, so we are committed),
we sketch each named file's gradient, the very vector our digest covers, and send one SKETCH per file. A file we have
not computed for step t is answered with an ERROR (the PS treats it as an erasure for that file). Byzantine agents
that sketch something else, or nothing, live in :mod:`shield_agent.adversary`.
"""
from __future__ import annotations

import numpy as np

from byzantine.sketch import SketchParams, l2_norm, sketch_many
from wire.sketch import SketchAnswer, SketchRequest


def answers(request: SketchRequest, gradients: dict[int, np.ndarray]) -> list[SketchAnswer]:
    """Sketch every file of ``request`` found in ``gradients`` (one pass over G for all of them); a non-finite
    gradient gets ``sketch=None``. Runs off the event loop."""
    params = SketchParams(rows=request.rows, width=request.width)
    finite = [f for f in request.files if f in gradients and np.isfinite(gradients[f]).all()]
    sketches = dict(zip(finite, sketch_many([gradients[f] for f in finite], request.seed, params), strict=False))
    out = []
    for f in request.files:
        if f not in gradients:
            continue
        if f in sketches:
            out.append(SketchAnswer(request.step, f, sketches[f].astype("<f8").tobytes(), l2_norm(gradients[f])))
        else:
            out.append(SketchAnswer(request.step, f, None, None))
    return out
