"""Determinism classes: agents whose canonical probe gradient has the same digest compute bit-equal gradients.

At JOB the PS names a probe (file 0 of step 0 at the job's initial parameters) and a probe seed; each agent answers
with its environment, the digest of that gradient and its sketch (the agent's fingerprint module). Agents with
equal probe digests form one class. The honest spread between classes, estimated from the probe sketches that the PS
or a quorum of a class's members vouch for, sets the tolerance of the sketch vote
(:func:`byzantine.tolerance.decide_tolerance`); under ``--vote exact`` only the majority class runs, since
exact digests cannot agree across classes (docs/byzantine.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from byzantine.sketch import DEFAULT_PARAMS, SketchParams, SketchReply
from byzantine.tolerance import (
    DEFAULT_CAP,
    SPREAD_FACTOR,
    ProbeClaim,
    Reference,
    ToleranceDecision,
    check_override,
    clamp_tolerance,
    decide_tolerance,
    same_reply,
    tolerance_floor,
)
from byzantine.vote import VoteMode
from shield_ps.errors import ShieldPSError
from wire.errors import MessageError
from wire.job import JobFingerprint, ProbeSpec, parse_job_fingerprint

log = logging.getLogger(__name__)

UNKNOWN_CLASS = "unknown"


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


def probe_spec(seed: bytes, params: SketchParams = DEFAULT_PARAMS) -> ProbeSpec:
    """The ``probe`` of JOB: file 0 of step 0 at the initial parameters, sketched under ``seed``."""
    return ProbeSpec(0, 0, seed, params.rows, params.width)


def probe_request(seed: bytes, params: SketchParams = DEFAULT_PARAMS) -> dict[str, Any]:
    """The ``probe`` field of JOB as it travels (:func:`probe_spec`'s header)."""
    return probe_spec(seed, params).header()


def parse_fingerprint(worker: int, reply: dict[str, Any] | JobFingerprint,
                      params: SketchParams = DEFAULT_PARAMS) -> Fingerprint:
    """The fingerprint of an agent's JOB reply (a header, or its fields as :func:`wire.job.parse_job_fingerprint`
    typed them: all optional, older agents send none), with the probe sketch checked against the one the PS asked
    for (its size, finite values)."""
    if isinstance(reply, dict):
        try:
            reply = parse_job_fingerprint(reply)
        except MessageError as exc:
            raise FingerprintError(str(exc)) from None
    raw, probe = reply.probe_sketch, None
    if raw is not None:
        if len(raw) != params.nbytes:
            raise FingerprintError(f"probe_sketch must be {params.nbytes} bytes")
        values = np.frombuffer(raw, dtype="<f8").reshape(params.rows, params.width).astype(np.float64)
        if not np.isfinite(values).all() or reply.probe_norm is None:
            raise FingerprintError("probe_sketch and probe_norm must be finite")
        probe = SketchReply(values, reply.probe_norm)
    return Fingerprint(worker, dict(reply.environment or {}), reply.probe_digest, probe)


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
              params: SketchParams = DEFAULT_PARAMS, cap: float = DEFAULT_CAP) -> float:
    """The sketch vote's relative tolerance for a vouched-for ``spread``: ``override`` (``--vote-tol``) when given,
    else clamp(SPREAD_FACTOR * spread, floor, cap) with floor = max(1e-6, 20 x the quantisation error
    bound at d). Raises ConfigError for an override that the sketch cannot honour."""
    if override is not None:
        return check_override(override, d, params)
    return clamp_tolerance(spread, tolerance_floor(d, params), cap)


class FleetClasses:
    """The PS's bookkeeping of classes over a run: the JOB probe, admission, the tolerance, the ``classes`` event.

    ``set_tolerance`` receives every new tolerance (the step runner's auto vote); ``reference`` is the PS's own probe
    (:mod:`shield_ps.reference`), set before any agent gets JOB. ``quorum`` members must report one probe for a class
    other than the PS's to count (:mod:`byzantine.tolerance`). Under ``--vote exact`` one class runs: at
    start the agents outside a strict-majority class are excluded (:meth:`check_start`), and a later agent of
    another class is refused (:meth:`admit`)."""

    def __init__(self, vote: VoteMode, d: int, override: float | None, emit: Any, set_tolerance: Any, *,
                 quorum: int = 1) -> None:
        from byzantine.sketch import new_seed

        self.vote, self.d, self.override, self.quorum = vote, d, override, quorum
        self._emit, self._set_tolerance = emit, set_tolerance
        self.probe_seed = new_seed()
        self.registry = DeterminismClasses()
        self.reference: Reference | None = None
        self.started = False
        self.ended = False  # the run is over: agents leaving no longer change anything
        self.tolerance = tolerance(0.0, d, override)
        self.decision: ToleranceDecision | None = None

    def job_fields(self) -> dict[str, Any]:
        return {"probe": probe_request(self.probe_seed)}

    def probe(self) -> ProbeSpec:
        """The probe every agent's JOB names."""
        return probe_spec(self.probe_seed)

    def admit(self, worker: int, reply: dict[str, Any] | JobFingerprint) -> str | None:
        """Record ``worker``'s fingerprint; returns why it is refused (a probe that contradicts the PS's own, or under
        --vote exact a new class once the run started), else None. Raises FingerprintError for malformed fields."""
        fingerprint = parse_fingerprint(worker, reply)
        lie = self._contradicts_reference(fingerprint)
        if lie is not None:
            return lie
        known = set(self.registry.classes())
        if self.vote is VoteMode.EXACT and self.started and known and fingerprint.class_id not in known:
            return (f"--vote exact: this agent's determinism class {fingerprint.class_id} differs from the run's "
                    f"({', '.join(sorted(known))}); its digests could never agree (use --vote auto)")
        self.registry.add(fingerprint)
        if self.started:
            self.update()
        return None

    def _contradicts_reference(self, fingerprint: Fingerprint) -> str | None:
        ref = self.reference
        if ref is None or fingerprint.probe_digest != ref.digest or fingerprint.probe is None:
            return None
        if same_reply(fingerprint.probe, ref.probe):
            return None
        return ("its probe sketch or norm contradicts its own probe digest, whose gradient the PS computed itself: "
                "a lying agent (refused)")

    def class_of(self, worker: int) -> str:
        member = self.registry.members.get(worker)
        return member.class_id if member is not None else UNKNOWN_CLASS

    def leave(self, worker: int) -> None:
        """``worker`` left: its probe no longer counts (the tolerance is recomputed once the run has started)."""
        if self.registry.members.pop(worker, None) is not None and self.started and not self.ended:
            self.update()

    def check_start(self) -> dict[int, str]:
        """At the first step: set the tolerance and emit ``classes``. Under --vote exact over several classes, the
        agents outside a strict-majority class are returned (worker -> why) to be excluded; without a strict majority
        the run is refused (TrainingError)."""
        excluded: dict[int, str] = {}
        classes = self.registry.classes()
        if self.vote is VoteMode.EXACT and len(classes) > 1:
            excluded = self._exact_minorities(classes)
            for worker in excluded:
                self.registry.remove(worker)
        self.started = True
        self.update()
        return excluded

    def _exact_minorities(self, classes: dict[str, list[int]]) -> dict[int, str]:
        from shield_ps.errors import TrainingError

        total = sum(len(ws) for ws in classes.values())
        major, members = max(classes.items(), key=lambda item: (len(item[1]), -item[1][0]))
        if 2 * len(members) <= total:
            raise TrainingError(
                f"--vote exact: the agents fall into {len(classes)} determinism classes, none of them a majority, "
                f"whose gradients are never bit-equal: {self.registry.describe()}. Use --vote auto (the default: "
                "digests where replicas agree, sketches within a tolerance where they do not), or run every agent "
                "with the same software, device, thread count and kernel settings (ATEN_CPU_CAPABILITY, "
                "ONEDNN_MAX_CPU_ISA)")
        ours = self.registry.members[members[0]].environment
        out: dict[int, str] = {}
        for cid, workers in classes.items():
            if cid == major:
                continue
            env = self.registry.members[workers[0]].environment
            differing = sorted(k for k in set(env) | set(ours) if str(env.get(k)) != str(ours.get(k)))
            why = ("its environment matches the majority's, so its probe gradient is wrong (a faulty or lying agent)"
                   if not differing else "its environment differs: " + ", ".join(
                       f"{k}={env.get(k, '-')} (majority {ours.get(k, '-')})" for k in differing[:4])
                   + "; use --vote auto for a mixed fleet")
            for worker in workers:
                out[worker] = (f"--vote exact: excluded: determinism class {cid} is not the majority's {major}; "
                               + why)
        log.warning("--vote exact: %d agent(s) outside the majority class %s excluded: %s", len(out), major,
                    self.registry.describe())
        return out

    def update(self) -> None:
        members = self.registry.members
        claims = {w: ProbeClaim(m.probe_digest, m.probe) for w, m in members.items() if m.probe_digest is not None}
        decision = decide_tolerance(claims, self.d, quorum=self.quorum, reference=self.reference)
        self.decision = decision
        previous = self.tolerance
        self.tolerance = decision.tolerance if self.override is None else check_override(self.override, self.d)
        self._set_tolerance(self.tolerance)
        classes = self.registry.summary()
        if decision.unattested_spread * SPREAD_FACTOR > decision.cap:
            log.warning("probe spread %.3g (unattested included) times %g exceeds the cap %.3g: tolerance capped",
                        decision.unattested_spread, SPREAD_FACTOR, decision.cap)
        level = logging.INFO if self.tolerance != previous or len(classes) > 1 else logging.DEBUG
        log.log(level, "%d determinism class(es): %s; sketch tolerance %.3g (vouched probe spread %.3g, with "
                "unattested probes %.3g; cap %.3g)", len(classes), self.registry.describe(), self.tolerance,
                decision.spread, decision.unattested_spread, decision.cap)
        self._emit("classes", classes=classes, spread=decision.spread, tolerance=self.tolerance, vote=self.vote.value,
                   unattested=list(decision.unattested), unattested_spread=decision.unattested_spread,
                   cap=decision.cap, reference=self._reference_class())

    def _reference_class(self) -> str | None:
        return "c-" + self.reference.digest.hex()[:8] if self.reference is not None else None
