"""The on-cluster supervisor: never a runaway bill, even with the operator's laptop closed.

``shield-ops up`` starts it as a daemon on the PS node (``python -m shield_ops.supervisor --config
~/shield/supervisor.json``) when ``[autostop]`` or ``[mirror]`` asks for anything, *before* the PS. Every
``interval_s`` it re-reads its config, prices every instance of the cluster's current life (terminated ones included,
kept in ``~/shield/ledger.json``), reads the PS's pidfile, log and ``metrics.jsonl``, and terminates every tagged
instance, itself last, when :func:`~shield_ops.autostop.decide` says so: the run ended (``down_when_done``), the PS
failed to start or exited without a summary (``down_when_done``), ``max_hours`` passed, or ``max_cost`` is about to be
reached.

On a limit the PS is stopped first (SIGTERM to its session, then a bounded wait) so its files are closed, the S3
mirror, when configured, is synced one last time, and the decision (:class:`~shield_ops.autostop.Record`: reason,
final cost, last checkpoint) is written where it outlives this node: a tag on the cluster's security group and the
mirror (and ``~/shield/supervisor-state.json``, which ``status`` shows while the node lives). ``--record REASON``
only publishes a record (the boot watchdog calls it before it shuts the node down). It knows EC2 by tags only,
through the credentials the node has (an instance profile).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shield_ops import cost, ec2
from shield_ops.autostop import Limits, Observation, Reason, Record, decide, publish  # noqa: F401  (re-exported)
from shield_ops.cloud import Cloud

log = logging.getLogger("shield_ops.supervisor")

STATE_FILE = "supervisor-state.json"
LEDGER_FILE = "ledger.json"
SINCE_FILE = "supervisor.since"
PS_STOP_TIMEOUT_S = 60.0
CHECKPOINT_RE = re.compile(r"^step-(\d{8})\.npz$")


@dataclass(frozen=True)
class SupervisorConfig:
    """What ``up`` writes to ``~/shield/supervisor.json`` (re-read every interval, so a later ``up`` can change it).
    ``ps_start_by``: the UNIX time by which ``up`` will have started the PS (0: no PS start pending)."""

    cluster: str
    region: str
    run_dir: str
    limits: Limits
    interval_s: float = 10.0
    mirror: dict[str, Any] = field(default_factory=dict)
    incarnation: str = ""
    ps_start_by: float = 0.0

    @property
    def tags(self) -> dict[str, str]:
        return {"shield:cluster": self.cluster}

    @classmethod
    def from_json(cls, text: str) -> SupervisorConfig:
        raw = json.loads(text)
        limits = Limits(bool(raw.get("down_when_done", False)), raw.get("max_hours"), raw.get("max_cost"))
        return cls(str(raw["cluster"]), str(raw["region"]), str(raw["run_dir"]), limits,
                   float(raw.get("interval_s", 10.0)), dict(raw.get("mirror") or {}),
                   str(raw.get("incarnation", "")), float(raw.get("ps_start_by") or 0.0))

    def to_json(self) -> str:
        return json.dumps({"cluster": self.cluster, "region": self.region, "run_dir": self.run_dir,
                           "down_when_done": self.limits.down_when_done, "max_hours": self.limits.max_hours,
                           "max_cost": self.limits.max_cost, "interval_s": self.interval_s, "mirror": self.mirror,
                           "incarnation": self.incarnation, "ps_start_by": self.ps_start_by},
                          indent=1)


def _tail_lines(path: Path, tail_bytes: int) -> list[bytes]:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - tail_bytes))
            return handle.read().splitlines()
    except OSError:
        return []


def _events(metrics: Path, tail_bytes: int) -> list[dict[str, Any]]:
    out = []
    for line in _tail_lines(metrics, tail_bytes):
        if b'"summary"' not in line and b'"job"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            out.append(event)
    return out


def last_summary(metrics: Path, tail_bytes: int = 1 << 16) -> str | None:
    """The ``reason`` of the run's last ``summary`` event in ``metrics.jsonl``, unless a ``job`` (a resumed run)
    follows it (untrusted text: bounded, parsed safely)."""
    reason = None
    for event in _events(metrics, tail_bytes):
        if event.get("kind") == "summary":
            reason = str(event.get("reason", "unknown"))[:500]
        elif event.get("kind") == "job":
            reason = None
    return reason


def last_job_time(metrics: Path, tail_bytes: int = 1 << 16) -> float | None:
    """The ``time`` of the last ``job`` event (written once the PS has accepted its model and checkpoint)."""
    times = [e.get("time") for e in _events(metrics, tail_bytes) if e.get("kind") == "job"]
    return float(times[-1]) if times and isinstance(times[-1], (int, float)) else None


def pid_alive(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if it names a live, non-zombie process."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        if ") Z " in Path(f"/proc/{pid}/stat").read_text():
            return None
    except OSError:
        pass
    return pid


def log_tail(path: Path, lines: int = 4, tail_bytes: int = 2048) -> str:
    """The last lines of a log, printable characters only, for a reason's text."""
    kept = [b.decode("utf-8", "replace") for b in _tail_lines(path, tail_bytes) if b.strip()][-lines:]
    return " | ".join("".join(c for c in line if c.isprintable()).strip()[:300] for line in kept)


def newest_checkpoint(run_dir: Path) -> int | None:
    steps = [int(m.group(1)) for p in (run_dir / "checkpoints").glob("step-*.npz")
             if (m := CHECKPOINT_RE.match(p.name))]
    return max(steps) if steps else None


class Supervisor:
    """The loop on the PS node (``root`` is ``~/shield``)."""

    def __init__(self, config_path: Path, root: Path) -> None:
        self.config_path = config_path
        self.root = root
        self.ledger = cost.Ledger(root / LEDGER_FILE)
        self.since = self._since()
        self._last_look: float | None = None  # when observe last ran (time.monotonic())

    def _since(self) -> float:
        path = self.root / SINCE_FILE
        try:
            return float(path.read_text())
        except (OSError, ValueError):
            now = time.time()
            path.write_text(f"{now}\n")
            return now

    def config(self) -> SupervisorConfig:
        return SupervisorConfig.from_json(self.config_path.read_text())

    def _write_state(self, **fields: Any) -> None:
        tmp = self.root / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps({"time": time.time(), **fields}))
        os.replace(tmp, self.root / STATE_FILE)

    def _ps(self, cfg: SupervisorConfig) -> tuple[str, bool, bool]:
        """(``waiting`` | ``alive`` | ``exited``, whether that PS began its run, whether its start is overdue)."""
        pidfile = self.root / "ps.pid"
        if not pidfile.exists():
            return "waiting", False, bool(cfg.ps_start_by) and time.time() > cfg.ps_start_by
        state = "alive" if pid_alive(pidfile) is not None else "exited"
        began = last_job_time(self.root / cfg.run_dir / "metrics.jsonl")
        try:
            started = pidfile.stat().st_mtime
        except OSError:
            started = 0.0
        return state, began is not None and began >= started - 5, False

    async def observe(self, cloud: Cloud, cfg: SupervisorConfig) -> Observation:
        nodes = ec2.of_incarnation(await cloud.find_instances(cfg, include_gone=True), {cfg.incarnation} - {""})
        prices = await cloud.spot_prices({n.instance_type for n in nodes})
        now = time.time()
        self.ledger.observe(nodes, prices, now)
        self.ledger.save()
        run_dir = self.root / cfg.run_dir
        # the clock of max_hours: from the first launch of this life of the cluster (so a replaced PS does not
        # restart it), or from this supervisor's first start if that is earlier
        start = min([self.since] + [e.launched for e in self.ledger.entries.values()])
        ps, began, overdue = self._ps(cfg)
        # the next checks come a sleep plus a look apart: on a busy node a look can take longer than the interval,
        # and max_cost is projected over the gap between looks actually seen, not the configured sleep alone
        looked, self._last_look = self._last_look, time.monotonic()
        gap = cfg.interval_s if looked is None else max(cfg.interval_s, self._last_look - looked)
        return Observation(last_summary(run_dir / "metrics.jsonl"), ps == "alive", now - start,
                           self.ledger.total(now), self.ledger.hourly(), gap, ps=ps, run_began=began,
                           start_overdue=overdue, ps_log=log_tail(self.root / "logs/ps.log") if ps == "exited" else "")

    async def _stop_ps(self) -> None:
        pid = pid_alive(self.root / "ps.pid")
        if pid is None:
            return
        log.info("stopping the PS (pid %d)", pid)
        for sig, wait_s in ((signal.SIGTERM, PS_STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)
            except OSError:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while pid_alive(self.root / "ps.pid") is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            if pid_alive(self.root / "ps.pid") is None:
                return
            # checkpoints are written to a temporary name and renamed: a kill cannot leave a torn one
            log.warning("the PS did not stop within %.0fs of %s", wait_s, sig.name)

    def record(self, cfg: SupervisorConfig, reason: str, why: str) -> Record:
        """The record of a stop now: the cost so far, the run and its newest checkpoint (mirrored or local)."""
        from shield_ops.mirror import Mirror

        step = newest_checkpoint(self.root / cfg.run_dir)
        url = None
        if step is not None:
            name = f"step-{step:08d}.npz"
            url = Mirror.from_config(cfg.mirror).url(cfg.run_dir, "checkpoints", name) if cfg.mirror else None
        return Record(reason, why, time.time(), round(self.ledger.total(time.time()), 9), cfg.run_dir, step, url,
                      cfg.incarnation or None, vars(cfg.limits))

    async def stop_cluster(self, cloud: Cloud, cfg: SupervisorConfig, reason: Reason, why: str,
                           seen: Observation, tick: int) -> None:
        """Stop the PS (bounded), sync the mirror, publish the record, then terminate every live tagged instance."""
        await self._stop_ps()
        if cfg.mirror:
            from shield_ops import mirror

            await mirror.sync_dir(cfg.mirror, self.root / cfg.run_dir)
        nodes = await cloud.find_instances(cfg)
        log.info("terminating %s (%s)", ", ".join(n.instance_id for n in nodes) or "nothing", why)
        record = self.record(cfg, reason.value, why)
        wrote = await publish(cloud, cfg, record, cfg.mirror)
        log.info("autostop record: %s (in %s)", record.line(), ", ".join(wrote) or "nowhere but this node")
        self._write_state(decision=reason.value, why=why, cost_usd=record.cost_usd,
                          decided_cost_usd=round(seen.cost_usd, 9), tick=tick, limits=vars(cfg.limits),
                          terminating=[n.instance_id for n in nodes], record=json.loads(record.to_json()))
        await cloud.terminate(cfg, nodes)

    async def _tick(self, cloud: Cloud, tick: int) -> bool:
        """One look; True when the cluster was stopped."""
        cfg = self.config()
        obs = await self.observe(cloud, cfg)
        verdict = decide(obs, cfg.limits)
        self._write_state(decision=None, cost_usd=round(obs.cost_usd, 9), usd_per_hour=round(obs.usd_per_hour, 9),
                          elapsed_s=round(obs.elapsed_s, 1), limits=vars(cfg.limits), run_ended=obs.summary_reason,
                          ps=obs.ps)
        if cfg.mirror:
            from shield_ops import mirror

            await mirror.sync_dir(cfg.mirror, self.root / cfg.run_dir)
        if verdict is None:
            return False
        await self.stop_cluster(cloud, cfg, *verdict, seen=obs, tick=tick)
        return True

    async def run(self, max_ticks: int | None = None) -> int:
        """Watch until the cluster is stopped (0), or the first look at EC2 fails (3: no credentials, say so)."""
        cfg = self.config()
        async with ec2.EC2.open(cfg.region) as cloud:
            try:
                await self.observe(cloud, cfg)
            except Exception as exc:  # noqa: BLE001 - the one line the operator needs, then exit
                log.error("cannot watch the cluster through EC2 (%s): give the PS instance an instance profile "
                          "allowing ec2:DescribeInstances, ec2:DescribeSpotPriceHistory, ec2:TerminateInstances "
                          "and ec2:CreateTags (autostop.instance_profile)", exc)
                return 3
            ticks = 0
            while max_ticks is None or ticks < max_ticks:
                ticks += 1
                try:
                    if await self._tick(cloud, ticks):
                        return 0
                except Exception:  # noqa: BLE001 - a transient EC2/S3 error must not end the watch
                    log.exception("supervisor tick failed; retrying in %.0fs", cfg.interval_s)
                with contextlib.suppress(OSError, ValueError, KeyError):
                    cfg = self.config()
                await asyncio.sleep(cfg.interval_s)
        return 0

    async def record_only(self, reason: str) -> int:
        """Publish a record of a stop decided elsewhere (the boot watchdog), without terminating anything."""
        cfg = self.config()
        async with ec2.EC2.open(cfg.region) as cloud:
            with contextlib.suppress(Exception):
                await self.observe(cloud, cfg)
            why = {"idle": "the instance watchdog: no PS, and no agent connected, for the idle bound",
                   "deadline": "the instance watchdog: the boot deadline (max-hours / max-cost backstop) passed"}
            record = self.record(cfg, Reason(reason).value, why.get(reason, reason))
            await publish(cloud, cfg, record, cfg.mirror)
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shield_ops.supervisor", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the supervisor.json written by shield-ops up")
    parser.add_argument("--record", choices=[Reason.IDLE.value, Reason.DEADLINE.value], default=None,
                        help="only publish why the node is stopping (the boot watchdog's reason), then exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    supervisor = Supervisor(args.config, args.config.resolve().parent)
    if args.record:
        return asyncio.run(supervisor.record_only(args.record))
    return asyncio.run(supervisor.run())


if __name__ == "__main__":
    sys.exit(main())
