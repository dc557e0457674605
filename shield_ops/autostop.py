"""Why a cluster stopped itself, decided and remembered.

:func:`decide` is the supervisor's rule (a pure function of one :class:`Observation`); a :class:`Record` is what it
decided (the reason, the final cost, the run and its last checkpoint). The record must outlive the PS node that made
it, so :func:`publish` writes it where a terminated instance cannot take it along: a tag on the cluster's security
group (``shield:autostop``; the group lives until ``down``), and, with ``[mirror]``, ``AUTOSTOP.json`` next to the
life's runs in S3. ``status`` and ``down`` read it back (:func:`from_groups`) and keep a copy in the local state.
"""
from __future__ import annotations

import enum
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from shield_ops.cloud import Cloud, Tagged

log = logging.getLogger(__name__)

#: the tag on the cluster's security group (one life of the cluster) holding the compact record.
TAG = "shield:autostop"
TAG_MAX = 255
RECORD_FILE = "AUTOSTOP.json"


class Reason(str, enum.Enum):
    """Why the cluster was stopped."""

    COMPLETED = "run-completed"
    FAILED = "run-failed"
    PS_GONE = "ps-exited"
    FAILED_START = "failed-start"
    MAX_HOURS = "max-hours"
    MAX_COST = "max-cost"
    IDLE = "idle"          # the instance-side watchdog (user data): no daemon for the idle bound
    DEADLINE = "deadline"  # the instance-side watchdog: the boot deadline (max-hours / max-cost backstop)


@dataclass(frozen=True)
class Limits:
    down_when_done: bool = False
    max_hours: float | None = None
    max_cost: float | None = None


@dataclass(frozen=True)
class Observation:
    """One look at the cluster: the run's end (the summary's reason), the PS's process, the clock and the bill.

    ``ps`` is ``"waiting"`` (no PS started yet), ``"alive"`` or ``"exited"``; ``run_began`` says whether the PS
    now in the pidfile wrote its ``job`` event (its model and checkpoint were accepted); ``start_overdue`` that no PS
    was started by the deadline ``up`` gave; ``ps_log`` is the tail of the PS's log (for the reason's text)."""

    summary_reason: str | None
    ps_alive: bool
    elapsed_s: float
    cost_usd: float
    usd_per_hour: float
    interval_s: float
    ps: str = "alive"
    run_began: bool = True
    start_overdue: bool = False
    ps_log: str = ""


def _done(obs: Observation) -> tuple[Reason, str] | None:
    """The ``down_when_done`` rules: the run ended, or its PS never got going."""
    if obs.summary_reason is not None:
        if obs.summary_reason == "completed":
            return Reason.COMPLETED, "the run completed"
        return Reason.FAILED, f"the run ended: {obs.summary_reason}"
    tail = f": {obs.ps_log}" if obs.ps_log else ""
    if obs.ps == "exited" and not obs.run_began:
        return Reason.FAILED_START, f"the PS exited before its run began{tail}"
    if obs.ps == "exited" or (obs.ps == "alive" and not obs.ps_alive):
        return Reason.PS_GONE, f"the PS exited without a summary{tail}"
    if obs.ps == "waiting" and obs.start_overdue:
        return Reason.FAILED_START, "no PS was started by the deadline `up` set (was `up` interrupted?)"
    return None


def decide(obs: Observation, limits: Limits) -> tuple[Reason, str] | None:
    """Whether to stop the cluster now, and why (a pure function of one observation)."""
    if limits.down_when_done:
        verdict = _done(obs)
        if verdict is not None:
            return verdict
    if limits.max_hours is not None and obs.elapsed_s >= limits.max_hours * 3600:
        return Reason.MAX_HOURS, f"ran {obs.elapsed_s / 3600:.3f} h of the {limits.max_hours:g} h allowed"
    if limits.max_cost is not None:
        soon = obs.cost_usd + obs.usd_per_hour * 2 * obs.interval_s / 3600
        if soon >= limits.max_cost:
            return Reason.MAX_COST, (f"cost ${obs.cost_usd:.6g} (+${soon - obs.cost_usd:.3g} by the next checks) "
                                     f"reaches --max-cost ${limits.max_cost:g}")
    return None


@dataclass
class Record:
    """What stopped a cluster: the reason, when, the final cost and the run's last checkpoint."""

    reason: str
    why: str
    time: float
    cost_usd: float | None = None
    run: str | None = None
    last_checkpoint: int | None = None
    checkpoint_url: str | None = None
    life: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def compact(self) -> str:
        """The record in at most :data:`TAG_MAX` characters (an EC2 tag value): the reason's text is cut to fit."""
        head = {"r": self.reason, "t": round(self.time), "c": None if self.cost_usd is None else float(
            f"{self.cost_usd:.4g}"), "u": self.run, "k": self.last_checkpoint}
        text = json.dumps({**head, "w": ""}, separators=(",", ":"))
        room = TAG_MAX - len(text)
        return json.dumps({**head, "w": self.why[:max(0, room - 8)]}, separators=(",", ":"))[:TAG_MAX]

    @classmethod
    def parse(cls, text: str) -> Record | None:
        """A record from its JSON or its compact form (untrusted text: anything odd gives None)."""
        try:
            raw = json.loads(text[:65536])
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        if "r" in raw:
            raw = {"reason": raw.get("r"), "why": raw.get("w", ""), "time": raw.get("t"), "cost_usd": raw.get("c"),
                   "run": raw.get("u"), "last_checkpoint": raw.get("k")}
        limits = raw.get("limits")
        try:
            return cls(reason=str(raw["reason"])[:32], why=str(raw.get("why") or "")[:2000],
                       time=float(raw["time"]), cost_usd=_number(raw.get("cost_usd")),
                       run=_text(raw.get("run")), last_checkpoint=_integer(raw.get("last_checkpoint")),
                       checkpoint_url=_text(raw.get("checkpoint_url"), 1024), life=_text(raw.get("life")),
                       limits=limits if isinstance(limits, dict) else {})
        except (KeyError, TypeError, ValueError):
            return None

    def line(self) -> str:
        """One line for ``status`` and ``down``."""
        from shield_ops import fmt

        parts = [f"{self.reason} at {fmt.when(self.time)} ({self.why})" if self.why else
                 f"{self.reason} at {fmt.when(self.time)}"]
        if self.cost_usd is not None:
            parts.append(f"final cost {fmt.usd(self.cost_usd)}")
        if self.last_checkpoint is not None:
            where = f" ({self.checkpoint_url})" if self.checkpoint_url else " (on the PS node's disk, gone with it)"
            parts.append(f"last checkpoint: step {self.last_checkpoint} of {self.run or 'the run'}{where}")
        elif self.run:
            parts.append(f"run {self.run}, no checkpoint")
        return "; ".join(parts)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any, limit: int = 200) -> str | None:
    return str(value)[:limit] if isinstance(value, str) and value else None


def from_groups(groups: list[dict[str, Any]], life: str | None = None) -> Record | None:
    """The record on the cluster's security groups (``life``'s when given, else the newest)."""
    found: list[Record] = []
    for group in groups:
        if life is not None and group.get("GroupId") != life:
            continue
        tags = {t.get("Key"): t.get("Value") for t in group.get("Tags", [])}
        record = Record.parse(tags[TAG]) if isinstance(tags.get(TAG), str) else None
        if record is not None:
            record.life = record.life or group.get("GroupId")
            found.append(record)
    return max(found, key=lambda r: r.time) if found else None


async def publish(cloud: Cloud, cluster: Tagged, record: Record, mirror: dict[str, Any] | None = None) -> list[str]:
    """Write ``record`` where it outlives the cluster's instances: the life's security group tag and, with a mirror,
    ``AUTOSTOP.json`` in the life's prefix. Returns where it went; a failure is logged, never raised (the stop must
    go on)."""
    wrote: list[str] = []
    if record.life:
        try:
            await cloud.tag_life(cluster, record.life, {TAG: record.compact()})
            wrote.append(f"tag {TAG} of {record.life}")
        except Exception as exc:  # noqa: BLE001 - e.g. no ec2:CreateTags: the mirror and the log still have it
            log.error("cannot tag %s with the autostop record: %s", record.life, exc)
    if mirror:
        from shield_ops.mirror import Mirror

        try:
            url = await Mirror.from_config(mirror).put_record(record.to_json())
            wrote.append(url)
        except Exception as exc:  # noqa: BLE001 - the tag still has it
            log.error("cannot write the autostop record to the mirror: %s", exc)
    return wrote
