"""Behaviours that lie in the JOB reply's determinism fingerprint (the probe that sets the sketch vote's tolerance,
shield_agent.fingerprint and the PS's determinism classes)."""
from __future__ import annotations

from typing import Any

import numpy as np

from byzantine.sketch import SketchParams, l2_norm, sketch
from shield_agent.adversary import vectors
from shield_agent.adversary.base import Behaviour
from shield_agent.adversary.params import Param, real
from wire import digest_bytes


def fake_probe(gradient: np.ndarray, rel: float) -> np.ndarray:
    """The probe gradient plus ``rel * ||g|| * u`` (a fixed direction): what a probe liar claims it computed."""
    return vectors.offset(gradient.copy(), rel, vectors.direction(gradient.shape[0], vectors.PROBE_TAG))


def _sketch_fields(fields: dict[str, Any], vector: np.ndarray, probe: dict[str, Any]) -> None:
    params = SketchParams(rows=probe["rows"], width=probe["width"])
    fields["probe_sketch"] = sketch(vector, probe["seed"], params).astype("<f8").tobytes()
    fields["probe_norm"] = l2_norm(vector)


class FakeProbe(Behaviour):
    """At JOB, claims a probe gradient of g + REL*||g||*u: a probe digest of its own (a class of one) and that
    vector's sketch and norm, so the measured spread between classes is about REL and the tolerance 10 x REL (capped).

    Expected of the PS: no unauthenticated claim sets the tolerance: one agent's probe moves it by at most 2x, a
    class's probe counts only when r' of its members attest it (or the PS computes a reference itself), and the
    tolerance is recomputed when the liar leaves (issue #26). Under ``--vote exact``, the liar (a minority class
    whose environment matches the majority's) is excluded, not the run."""

    name = "fake-probe"
    params = (Param("rel", real(0.0, 10.0), 0.005, "a number in [0, 10]", "relative distance claimed"),)

    def probe_fields(self, fields: dict[str, Any], gradient: np.ndarray, probe: dict[str, Any]) -> None:
        fake = fake_probe(gradient, self.args["rel"])
        fields["probe_digest"] = digest_bytes(fake.data.cast("B"))
        _sketch_fields(fields, fake, probe)


class StealthProbe(Behaviour):
    """At JOB, keeps its class's true probe digest and sends only a fake probe sketch and norm (of g + REL*||g||*u).
    Before issue #26 the lowest worker of a class stood for the class, so the ``classes`` event showed nothing.

    Expected of the PS: as for ``fake-probe``; a sketch that contradicts the digest its class attests is not
    believed."""

    name = "stealth-probe"
    params = FakeProbe.params

    def probe_fields(self, fields: dict[str, Any], gradient: np.ndarray, probe: dict[str, Any]) -> None:
        _sketch_fields(fields, fake_probe(gradient, self.args["rel"]), probe)
