"""Behaviours that change what an agent commits to, sketches or sends as a payload (the vote's seams).

Each is a pure function of the gradient it computed honestly, the step, the file and (where said) its worker id, so
co-holders running the same behaviour commit to the same bits exactly when the docstring says they do.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from shield_agent.adversary import vectors
from shield_agent.adversary.base import Behaviour
from shield_agent.adversary.params import Param, choice, real, whole

if TYPE_CHECKING:
    from shield_agent.client import AgentSession
    from wire import Message


class Hider(Behaviour):
    """Commits g + DELTA*||g||*U, U one fixed unit direction (the same for every step, file and hider), and sketches
    what it committed, so that its files stay within the sketch vote's tolerance while every payload taken from it
    pushes the model along U. Hiders holding one file commit the same bits (an exact r' winner when r' of them meet).

    Expected of the PS: a file won by the sketch vote that a hider could bias counts in ``files_corrupted``, and q
    hiders move the parameters no further than the honest spread (issue #26: a coordinate-wise median of the agreeing
    group's payloads, or a design with the same effect). Combine with ``fake-probe`` to inflate the tolerance first."""

    name = "hider"
    params = (Param("delta", real(0.0, 10.0), 0.04, "a number in [0, 10]", "relative size of the bias"),)

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        self._u: np.ndarray | None = None

    def _direction(self, d: int) -> np.ndarray:
        u = self._u
        if u is None or u.shape[0] != d:
            u = self._u = vectors.direction(d, vectors.HIDER_TAG)
        return u

    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int) -> None:
        vectors.offset(gradient, self.args["delta"], self._direction(gradient.shape[0]))


class SketchLiar(Behaviour):
    """Commits g + REL*||g||*u(step, file) but sketches its honest g; ``centre`` grinds the committed digest to start
    with BITS zero bits (ties of the sketch vote go to the smallest digest), ``non-centre`` to start with BITS one
    bits, so that it never is the centre.

    Expected of the PS: a centre liar's payload is fetched, its recomputed sketch contradicts the one it sent: proven
    ``lying``, excluded for a growing number of steps. A non-centre liar is caught by a keyed random audit fetch
    (issue #26); before that fix it is never caught and counts as agreeing."""

    name = "sketch-liar"
    params = (Param("rel", real(0.0, 10.0), 0.01, "a number in [0, 10]", "relative deviation committed"),
              Param("role", choice("centre", "non-centre"), "centre", "centre or non-centre",
                    "whether it grinds to be its group's centre or never to be it"),
              Param("bits", whole(0, 16), 8, "an integer in 0..16", "digest bits ground (about 2^BITS hashes)"))
    sketches_input = True

    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int) -> None:
        vectors.deviate(gradient, self.args["rel"], step, file)
        if self.args["bits"]:
            vectors.grind(gradient, self.args["bits"], high=self.args["role"] == "non-centre")


class Dropper(Behaviour):
    """Commits and sketches g + REL*||g||*u(worker, step, file): garbage that agrees with nobody, not even another
    dropper, so files held by r - r' + 1 droppers lose their r' agreement and are dropped.

    Expected of the PS: the droppers are ``outvoted``; files that provably had a Byzantine majority lower the
    aggregator's s soundly instead of skipping the update, and ``serve`` refuses at start a configuration where q
    droppers can block every update (issue #26)."""

    name = "dropper"
    params = (Param("rel", real(0.0, 1e6), 1.0, "a number in [0, 1e6]", "relative size of the garbage"),)

    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int) -> None:
        vectors.offset_rolled(gradient, self.args["rel"], vectors.DROPPER_TAG, worker, step, file)


class SilentDisputer(Behaviour):
    """Commits its gradient moved by one ulp in one coordinate (a digest nobody else has) and never answers SKETCH,
    so each of its files is disputed although its other holders agree exactly.

    Expected of the PS: files with an exact r' winner never wait for sketches; the disputer is ``outvoted`` (or
    ``slow``), never absolved, and costs no step more than 1.5x the clean median. In a two-class fleet, where its
    file is split, the first step waits a straggler grace for its sketches and the next 8 steps do not wait for them
    at all."""

    name = "silent-disputer"
    answers_sketch = False

    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int) -> None:
        vectors.nudge(gradient, 7919 * worker + file)


class GrindingCentre(Behaviour):
    """Computes honestly, grinds its committed digest to start with BITS zero bits (one ulp at a time in the last
    coordinate: still within any tolerance) so that it wins the sketch vote's centre tie-break (the smallest
    committed digest), then never answers FETCH. Needs a disputed file (a two-class fleet) to matter.

    Expected of the PS: the centre is chosen by something the agent cannot grind (keyed by the per-step seed revealed
    after the commitment); the split file takes the median of its group's other payloads after a hedge delay the
    first time, and at once for the next 8 steps (a withheld payload is not waited for again until then); the step
    costs at most 1.5x the clean median and the grinder is ``slow``."""

    name = "grinding-centre"
    params = (Param("bits", whole(1, 16), 8, "an integer in 1..16", "digest bits ground (about 2^BITS hashes)"),)

    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int) -> None:
        vectors.grind(gradient, self.args["bits"])

    async def on_fetch(self, session: AgentSession, msg: Message) -> None:
        return  # never answers


class OtherClass(Behaviour):
    """Honest, modelling a second determinism class: every gradient and the probe gradient are offset by
    REL*||g||*u(step, file) (the same for every agent of the class, so its members agree bit for bit), and the
    environment says ``modelled_class``. The issue's measurements used 3e-7 (two CPU kernel settings of LeNet).

    Expected of the PS: a class of its own at JOB, disputed files settled by the sketch vote within a tolerance of
    about 10 x REL, nobody blamed."""

    name = "other-class"
    params = (Param("rel", real(0.0, 0.1), 3e-7, "a number in [0, 0.1]", "relative offset of the class"),)

    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int) -> None:
        vectors.deviate(gradient, self.args["rel"], step, file, vectors.OTHER_CLASS_TAG)

    def probe_gradient(self, gradient: np.ndarray, step: int, file: int) -> None:
        vectors.deviate(gradient, self.args["rel"], step, file, vectors.OTHER_CLASS_TAG)

    def probe_fields(self, fields: dict[str, Any], gradient: np.ndarray, probe: dict[str, Any]) -> None:
        fields["environment"] = {**fields["environment"], "modelled_class": f"other-class:{self.args['rel']:g}"}


class Scale(Behaviour):
    """Commits FACTOR x its gradient (``nan``: non-finite gradients), consistently in digest, sketch and payload.

    Expected of the PS: ``outvoted`` wherever r' honest holders agree, never proven lying (it never contradicts
    itself); a non-finite winning payload is dropped."""

    name = "scale"
    params = (Param("factor", real(-1e6, 1e6, nan=True), 2.0, "a number in [-1e6, 1e6] or nan",
                    "the factor"),)

    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int) -> None:
        vectors.scale(gradient, self.args["factor"])


class Deviator(Behaviour):
    """Commits and sketches g + REL*||g||*u(step, file), consistently (every deviator of a file commits the same).

    Expected of the PS: ``outvoted`` when REL exceeds the tolerance; within it, an agreeing replica (what a tolerance
    must allow: docs/byzantine.md)."""

    name = "deviator"
    params = (Param("rel", real(0.0, 10.0), 0.01, "a number in [0, 10]", "relative deviation"),)

    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int) -> None:
        vectors.deviate(gradient, self.args["rel"], step, file)


class Forger(Behaviour):
    """Sends honest digests and sketches, but answers FETCH with the negated payload (not what its digest names).

    Expected of the PS: proven ``lying`` whenever it is asked (the payload does not hash to the winning digest); the
    next holder is asked and the file is won."""

    name = "forger"
    forges = True

    def forge(self, payload: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return vectors.negate(payload, out)
