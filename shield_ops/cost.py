"""What a cluster has cost: every instance it ever had (terminated ones included), priced by the hour.

Pure functions and one small JSON ledger. EC2 forgets terminated instances after about an hour, so whoever watches
a cluster (``status``, ``down``, the on-cluster supervisor) keeps a ledger of every instance it has seen, and the cost
stays complete. An instance's running time is from its ``LaunchTime`` to the time in its ``StateTransitionReason``
("User initiated (2026-11-29 21:27:59 GMT)"), or to when it was first seen gone, or to now while it lives.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shield_ops.nodes import Node

_TRANSITION = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")
GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})


def transition_time(reason: str | None) -> dt.datetime | None:
    """The UTC time in an EC2 ``StateTransitionReason``, if it holds one."""
    match = _TRANSITION.search(reason or "")
    if match is None:
        return None
    return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)


def _utc(stamp: dt.datetime) -> dt.datetime:
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


@dataclass
class Entry:
    """One instance in the ledger (times as UNIX seconds)."""

    instance_id: str
    node: str
    instance_type: str
    zone: str
    launched: float
    ended: float | None = None
    usd_per_hour: float | None = None
    ec2_state: str = "running"

    def hours(self, now: float) -> float:
        return max(0.0, ((self.ended if self.ended is not None else now) - self.launched) / 3600.0)

    def cost(self, now: float) -> float | None:
        return None if self.usd_per_hour is None else self.usd_per_hour * self.hours(now)


class Ledger:
    """Instance id -> :class:`Entry`, optionally persisted (atomically) as JSON at ``path``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text())
                self.entries = {k: Entry(**v) for k, v in raw.get("instances", {}).items()}
            except (ValueError, TypeError, OSError):
                self.entries = {}  # a torn or foreign file: start afresh rather than fail the watch

    def observe(self, nodes: Iterable[Node], prices: dict[tuple[str, str], float], now: float) -> None:
        """Merge what EC2 reports now; an instance seen gone gets its end time (from EC2, else now)."""
        from shield_ops.ec2 import hourly_price

        for node in nodes:
            if node.launch_time is None:
                continue
            entry = self.entries.get(node.instance_id)
            if entry is None:
                entry = self.entries[node.instance_id] = Entry(
                    node.instance_id, node.name, node.instance_type, node.zone, _utc(node.launch_time).timestamp())
            entry.ec2_state = node.ec2_state
            price = hourly_price(prices, node.instance_type, node.zone)
            if price is not None:
                entry.usd_per_hour = price
            if node.ec2_state in GONE_STATES and entry.ended is None:
                ended = transition_time(node.transition_reason)
                entry.ended = ended.timestamp() if ended is not None else now

    def live(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.ended is None]

    def total(self, now: float) -> float:
        return sum(e.cost(now) or 0.0 for e in self.entries.values())

    def hourly(self) -> float:
        return sum(e.usd_per_hour or 0.0 for e in self.live())

    def history(self, node: str) -> list[Entry]:
        """Every instance that has been ``node``, oldest first."""
        return sorted((e for e in self.entries.values() if e.node == node), key=lambda e: e.launched)

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"instances": {k: asdict(v) for k, v in sorted(self.entries.items())}}, indent=1)
        fd, tmp = tempfile.mkstemp(prefix=".ledger-", dir=self.path.parent)
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
        os.replace(tmp, self.path)


def projection(cost_now: float, usd_per_hour: float, progress: dict[str, Any], elapsed_s: float | None) -> float | None:
    """The cost at the end of the run at the current hourly rate: ``cost_now + rate * time left``, where the time
    left is extrapolated from the PS's progress (steps done in ``elapsed_s``); None when there is nothing to go by."""
    step, total = progress.get("step"), progress.get("total_steps")
    if progress.get("finished"):
        return cost_now
    if not isinstance(step, int) or not isinstance(total, int) or step <= 0 or not elapsed_s or elapsed_s <= 0:
        return None
    start = progress.get("start_step") or 0
    done = max(1, step + 1 - start)
    left_s = max(0, total - step - 1) * elapsed_s / done
    return cost_now + usd_per_hour * left_s / 3600.0
