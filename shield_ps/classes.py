"""Determinism classes: agents whose canonical probe gradient has the same digest compute bit-equal gradients.

At JOB the PS names a probe (file 0 of step 0 at the job's initial parameters) and a probe seed; each agent answers
with its environment, the digest of that gradient and its sketch (:mod:`shield_agent.fingerprint`). Agents with
equal probe digests form one class. The honest spread between classes, estimated from the probe sketches, sets the
tolerance of the sketch vote (:func:`tolerance`); ``--vote exact`` with more than one class is refused, since exact
digests cannot agree across classes (docs/byzantine.md).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shield_ps.byzantine.sketch import DEFAULT_PARAMS, SketchParams, SketchReply, quantisation_error, relative_spread
from shield_ps.errors import ConfigError, ShieldPSError

log = logging.getLogger(__name__)

#: The tolerance is this multiple of the largest probe spread between classes ...
SPREAD_FACTOR = 10.0
#: ... capped here: far below the 0.7-1.4 relative distance between two different files' gradients, and below
#: what ALIE moves a file (1.1-1.3): see docs/byzantine.md.
TOLERANCE_CAP = 0.05
#: ... and never below this (and never below 20x the sketch's quantisation error at the model's size).
TOLERANCE_FLOOR = 1e-6
UNKNOWN_CLASS = "unknown"
_MAX_ENV_ITEMS = 32
_MAX_ENV_CHARS = 160


class FingerprintError(ShieldPSError):
    """A JOB reply whose fingerprint fields no honest agent would send (the PS drops that agent)."""

    code = "fingerprint"


@dataclass(frozen=True)
class Fingerprint:
    """What one agent reported at JOB."""

    worker: int
    environment: dict[str, Any]
    probe_digest: bytes | None
    probe: SketchReply | None

    @property
    def class_id(self) -> str:
        return "c-" + self.probe_digest.hex()[:8] if self.probe_digest is not None else UNKNOWN_CLASS


def probe_request(seed: bytes, params: SketchParams = DEFAULT_PARAMS) -> dict[str, Any]:
    """The ``probe`` field of JOB: file 0 of step 0 at the initial parameters, sketched under ``seed``."""
    return {"step": 0, "file": 0, "seed": seed, "rows": params.rows, "width": params.width}


def parse_fingerprint(worker: int, header: dict[str, Any], params: SketchParams = DEFAULT_PARAMS) -> Fingerprint:
    """Validate the additive fingerprint fields of an agent's JOB reply (all optional: older agents send none)."""
    env = header.get("environment", {})
    if type(env) is not dict or len(env) > _MAX_ENV_ITEMS:
        raise FingerprintError("environment must be a map of at most 32 entries")
    for key, value in env.items():
        if len(key) > 64 or type(value) not in (str, int, float, bool) or len(str(value)) > _MAX_ENV_CHARS:
            raise FingerprintError(f"environment entry {key[:64]!r} is not a short plain value")
    digest = header.get("probe_digest")
    if digest is not None and (type(digest) is not bytes or len(digest) != 32):
        raise FingerprintError("probe_digest must be 32 bytes")
    raw, norm = header.get("probe_sketch"), header.get("probe_norm")
    probe = None
    if raw is not None:
        if type(raw) is not bytes or len(raw) != params.nbytes:
            raise FingerprintError(f"probe_sketch must be {params.nbytes} bytes")
        values = np.frombuffer(raw, dtype="<f8").reshape(params.rows, params.width).astype(np.float64)
        if not np.isfinite(values).all() or type(norm) not in (int, float) or not math.isfinite(norm) or norm < 0:
            raise FingerprintError("probe_sketch and probe_norm must be finite")
        probe = SketchReply(values, float(norm))
    return Fingerprint(worker, dict(env), digest, probe)


@dataclass
class DeterminismClasses:
    """The classes of the agents connected now (worker -> fingerprint)."""

    members: dict[int, Fingerprint] = field(default_factory=dict)

    def add(self, fingerprint: Fingerprint) -> bool:
        """Record an agent; True when it brings a class not seen among the connected agents."""
        new = fingerprint.class_id not in {f.class_id for f in self.members.values()}
        self.members[fingerprint.worker] = fingerprint
        return new

    def remove(self, worker: int) -> None:
        self.members.pop(worker, None)

    def classes(self) -> dict[str, list[int]]:
        """class id -> its workers (sorted), classes in order of their lowest worker."""
        out: dict[str, list[int]] = {}
        for worker in sorted(self.members):
            out.setdefault(self.members[worker].class_id, []).append(worker)
        return out

    def spread(self) -> float:
        """Largest estimated relative distance between the probe gradients of two classes (0 with one class)."""
        representatives = [self.members[workers[0]].probe for workers in self.classes().values()]
        return relative_spread([p for p in representatives if p is not None])

    def describe(self) -> str:
        """One line per class: its id, workers and the environment entries that differ between classes."""
        classes = self.classes()
        envs = {cid: self.members[ws[0]].environment for cid, ws in classes.items()}
        keys = sorted({k for e in envs.values() for k in e})
        differing = [k for k in keys if len({str(e.get(k)) for e in envs.values()}) > 1] or keys[:4]
        return "; ".join(f"{cid} (workers {','.join(map(str, ws))}: "
                         + ", ".join(f"{k}={envs[cid].get(k, '-')}" for k in differing) + ")"
                         for cid, ws in classes.items())

    def summary(self) -> list[dict[str, Any]]:
        """For the ``classes`` event: id, workers and the environment of the class's first worker."""
        return [{"id": cid, "workers": ws, "environment": self.members[ws[0]].environment}
                for cid, ws in self.classes().items()]


def tolerance(spread: float, d: int, override: float | None = None,
              params: SketchParams = DEFAULT_PARAMS) -> float:
    """The sketch vote's relative tolerance: ``override`` (``--vote-tol``) when given, else
    clamp(SPREAD_FACTOR * spread, floor, TOLERANCE_CAP) with floor = max(TOLERANCE_FLOOR, 20 x the quantisation
    error bound at d). Raises ConfigError for an override that the sketch cannot honour."""
    floor = max(TOLERANCE_FLOOR, 20.0 * quantisation_error(d, params))
    if override is not None:
        if not floor <= override <= 0.5:
            raise ConfigError(f"--vote-tol {override:g} must be in [{floor:.2g}, 0.5] at d={d} (below the floor the "
                              "sketch's quantisation dominates; above 0.5 different files look alike)")
        return override
    value = min(max(SPREAD_FACTOR * spread, floor), TOLERANCE_CAP)
    if SPREAD_FACTOR * spread > TOLERANCE_CAP:
        log.warning("the honest spread between determinism classes (%.3g) times %g exceeds the cap %g: tolerance "
                    "capped; honest files of distant classes may be dropped (set --vote-tol or unify the fleet)",
                    spread, SPREAD_FACTOR, TOLERANCE_CAP)
    return value


class FleetClasses:
    """The PS's bookkeeping of classes over a run: the JOB probe, admission, the tolerance, the ``classes`` event.

    ``set_tolerance`` receives every new tolerance (the step runner's auto vote). Under ``--vote exact`` a second
    class is refused: at start (:meth:`check_start` raises) and afterwards (:meth:`admit` returns why)."""

    def __init__(self, vote: str, d: int, override: float | None, emit: Any, set_tolerance: Any) -> None:
        from shield_ps.byzantine.sketch import new_seed

        self.vote, self.d, self.override = vote, d, override
        self._emit, self._set_tolerance = emit, set_tolerance
        self.probe_seed = new_seed()
        self.registry = DeterminismClasses()
        self.started = False
        self.tolerance = tolerance(0.0, d, override)

    def job_fields(self) -> dict[str, Any]:
        return {"probe": probe_request(self.probe_seed)}

    def admit(self, worker: int, header: dict[str, Any]) -> str | None:
        """Record ``worker``'s fingerprint; returns why it is refused (exact vote, new class, run started), else None.
        Raises FingerprintError for malformed fields."""
        fingerprint = parse_fingerprint(worker, header)
        known = set(self.registry.classes())
        if self.vote == "exact" and self.started and known and fingerprint.class_id not in known:
            return (f"--vote exact: this agent's determinism class {fingerprint.class_id} differs from the run's "
                    f"({', '.join(sorted(known))}); its digests could never agree (use --vote auto)")
        if self.registry.add(fingerprint) and self.started:
            self.update()
        return None

    def class_of(self, worker: int) -> str:
        member = self.registry.members.get(worker)
        return member.class_id if member is not None else UNKNOWN_CLASS

    def leave(self, worker: int) -> None:
        self.registry.remove(worker)

    def check_start(self) -> None:
        """At the first step: refuse --vote exact over several classes; set the tolerance; emit ``classes``."""
        from shield_ps.errors import TrainingError

        classes = self.registry.classes()
        if self.vote == "exact" and len(classes) > 1:
            raise TrainingError(
                f"--vote exact: the agents fall into {len(classes)} determinism classes, whose gradients are never "
                f"bit-equal: {self.registry.describe()}. Use --vote auto (the default: digests where replicas agree, "
                "sketches within a tolerance where they do not), or run every agent with the same software, device, "
                "thread count and kernel settings (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA)")
        self.started = True
        self.update()

    def update(self) -> None:
        spread = self.registry.spread()
        self.tolerance = tolerance(spread, self.d, self.override)
        self._set_tolerance(self.tolerance)
        classes = self.registry.summary()
        log.info("%d determinism class(es): %s; sketch tolerance %.3g (probe spread %.3g)", len(classes),
                 self.registry.describe(), self.tolerance, spread)
        self._emit("classes", classes=classes, spread=spread, tolerance=self.tolerance, vote=self.vote)
