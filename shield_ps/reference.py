"""The PS's own probe: the canonical gradients it computes itself, so that no agent's claim alone sets the sketch
vote's tolerance (:mod:`byzantine.tolerance`).

At start the PS computes, with the job's own gradient code and thread count, the gradients of files 0, 1 and 2 of
step 0 at the initial parameters. File 0 is the probe every agent also computes and reports at JOB: its digest names
the PS's determinism class, and its sketch under the run's probe seed is the truth for that class. The smallest
relative distance between the three files' gradients is the model's own file-to-file distance, from which the
tolerance's cap follows. Cost: three file gradients on the PS, once (LeNet ~10 ms, ResNet-18 ~1 s on one core).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from byzantine.sketch import DEFAULT_PARAMS, SketchParams, SketchReply, l2_norm, sketch
from byzantine.tolerance import Reference, file_distance
from wire import digest_bytes

log = logging.getLogger(__name__)

#: Files whose step-0 gradients the PS computes (the first is the probe).
REFERENCE_FILES = (0, 1, 2)


class ProbeGradients:
    """The probe gradient and the file-to-file distance, computed once by :meth:`compute` (blocking: call it in an
    executor)."""

    def __init__(self, probe: np.ndarray, distance: float | None) -> None:
        self.probe = probe
        self.distance = distance
        self.digest = digest_bytes(probe.data.cast("B"))

    @classmethod
    def compute(cls, computer: Any, num_files: int) -> ProbeGradients:
        params = computer.initial_parameters()
        files = [f for f in REFERENCE_FILES if f < num_files]
        gradients = [computer.file_gradient(params, 0, f).gradient.copy() for f in files]
        distance = file_distance(gradients)
        log.info("reference probe: file 0 of step 0 computed on the PS; file-to-file distance %s",
                 f"{distance:.3g}" if distance is not None else "not measured (one file)")
        return cls(gradients[0], distance)

    def reference(self, seed: bytes, params: SketchParams = DEFAULT_PARAMS) -> Reference:
        """The probe sketched under the run's probe ``seed`` (blocking)."""
        if not np.isfinite(self.probe).all():
            return Reference(self.digest, SketchReply(None), self.distance)
        reply = SketchReply(sketch(self.probe, seed, params), l2_norm(self.probe))
        return Reference(self.digest, reply, self.distance)
