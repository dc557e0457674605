"""The on-cluster supervisor: never a runaway bill, even with the operator's laptop closed.

``shield-ops up`` starts it as a daemon on the PS node (``python -m shield_ops.supervisor --config
~/shield/supervisor.json``) when ``[autostop]`` asks for anything. Every ``interval_s`` it re-reads its config, prices
every instance carrying the cluster tag (terminated ones included, kept in ``~/shield/ledger.json``), reads the PS's
``metrics.jsonl`` and pidfile, and terminates every tagged instance, itself last, when

* the run has ended (its ``summary`` event; the PS writes it after the final checkpoint is on disk) or the PS has
  exited without one, and ``down_when_done`` is set;
* the cluster has run ``max_hours`` since the first launch of its current life (or the supervisor's first start);
* the cost so far, plus the next two intervals at the current rate, reaches ``max_cost``.

On a limit the PS is stopped first (SIGTERM to its session, then a bounded wait) so its files are closed, and the
S3 mirror, when configured, is synced one last time. What it decided is in ``~/shield/supervisor-state.json``, which
``shield-ops status`` shows. It knows EC2 by tags only, through the credentials the node has (an instance profile).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from shield_ops import cost, ec2
from shield_ops.cloud import Cloud

log = logging.getLogger("shield_ops.supervisor")

STATE_FILE = "supervisor-state.json"
LEDGER_FILE = "ledger.json"
SINCE_FILE = "supervisor.since"
PS_STOP_TIMEOUT_S = 60.0


class Reason(str, enum.Enum):
    """Why the supervisor stopped the cluster."""

    COMPLETED = "run-completed"
    FAILED = "run-failed"
    PS_GONE = "ps-exited"
    MAX_HOURS = "max-hours"
    MAX_COST = "max-cost"


@dataclass(frozen=True)
class Limits:
    down_when_done: bool = False
    max_hours: float | None = None
    max_cost: float | None = None


@dataclass(frozen=True)
class SupervisorConfig:
    """What ``up`` writes to ``~/shield/supervisor.json`` (re-read every interval, so a later ``up`` can change it)."""

    cluster: str
    region: str
    run_dir: str
    limits: Limits
    interval_s: float = 10.0
    mirror: dict[str, Any] = field(default_factory=dict)
    incarnation: str = ""

    @property
    def tags(self) -> dict[str, str]:
        return {"shield:cluster": self.cluster}

    @classmethod
    def from_json(cls, text: str) -> "SupervisorConfig":
        raw = json.loads(text)
        limits = Limits(bool(raw.get("down_when_done", False)), raw.get("max_hours"), raw.get("max_cost"))
        return cls(str(raw["cluster"]), str(raw["region"]), str(raw["run_dir"]), limits,
                   float(raw.get("interval_s", 10.0)), dict(raw.get("mirror") or {}),
                   str(raw.get("incarnation", "")))

    def to_json(self) -> str:
        return json.dumps({"cluster": self.cluster, "region": self.region, "run_dir": self.run_dir,
                           "down_when_done": self.limits.down_when_done, "max_hours": self.limits.max_hours,
                           "max_cost": self.limits.max_cost, "interval_s": self.interval_s, "mirror": self.mirror,
                           "incarnation": self.incarnation},
                          indent=1)


@dataclass(frozen=True)
class Observation:
    """One look at the cluster: the run's end (the summary's reason), whether the PS lives, the clock and the bill."""

    summary_reason: str | None
    ps_alive: bool
    elapsed_s: float
    cost_usd: float
    usd_per_hour: float
    interval_s: float


def decide(obs: Observation, limits: Limits) -> tuple[Reason, str] | None:
    """Whether to stop the cluster now, and why (a pure function of one observation)."""
    if limits.down_when_done and obs.summary_reason is not None:
        if obs.summary_reason == "completed":
            return Reason.COMPLETED, "the run completed"
        return Reason.FAILED, f"the run ended: {obs.summary_reason}"
    if limits.down_when_done and not obs.ps_alive:
        return Reason.PS_GONE, "the PS exited without a summary"
    if limits.max_hours is not None and obs.elapsed_s >= limits.max_hours * 3600:
        return Reason.MAX_HOURS, f"ran {obs.elapsed_s / 3600:.3f} h of the {limits.max_hours} h allowed"
    if limits.max_cost is not None:
        soon = obs.cost_usd + obs.usd_per_hour * 2 * obs.interval_s / 3600
        if soon >= limits.max_cost:
            return Reason.MAX_COST, (f"cost ${obs.cost_usd:.6f} (+${soon - obs.cost_usd:.6f} by the next checks) "
                                     f"reaches --max-cost ${limits.max_cost}")
    return None


def last_summary(metrics: Path, tail_bytes: int = 1 << 16) -> str | None:
    """The ``reason`` of the last ``summary`` event in ``metrics.jsonl`` (untrusted text: bounded, parsed safely)."""
    try:
        with metrics.open("rb") as handle:
            handle.seek(max(0, metrics.stat().st_size - tail_bytes))
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if b'"summary"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("kind") == "summary":
            return str(event.get("reason", "unknown"))[:500]
    return None


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


class Supervisor:
    """The loop on the PS node (``root`` is ``~/shield``)."""

    def __init__(self, config_path: Path, root: Path) -> None:
        self.config_path = config_path
        self.root = root
        self.ledger = cost.Ledger(root / LEDGER_FILE)
        self.since = self._since()

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
        return Observation(last_summary(run_dir / "metrics.jsonl"), pid_alive(self.root / "ps.pid") is not None,
                           now - start, self.ledger.total(now), self.ledger.hourly(), cfg.interval_s)

    async def stop_cluster(self, cloud: Cloud, cfg: SupervisorConfig, reason: Reason, why: str,
                           seen: Observation, tick: int) -> None:
        """Stop the PS (bounded), sync the mirror, then terminate every live tagged instance."""
        pid = pid_alive(self.root / "ps.pid")
        if pid is not None:
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
                    break
                # checkpoints are written to a temporary name and renamed: a kill cannot leave a torn one
                log.warning("the PS did not stop within %.0fs of %s", wait_s, sig.name)
        if cfg.mirror:
            from shield_ops import mirror

            await mirror.sync_dir(cfg.mirror, self.root / cfg.run_dir)
        nodes = await cloud.find_instances(cfg)
        log.info("terminating %s (%s)", ", ".join(n.instance_id for n in nodes) or "nothing", why)
        self._write_state(decision=reason.value, why=why, cost_usd=round(self.ledger.total(time.time()), 9),
                          decided_cost_usd=round(seen.cost_usd, 9), tick=tick, limits=vars(cfg.limits),
                          terminating=[n.instance_id for n in nodes])
        await cloud.terminate(cfg, nodes)

    async def run(self, max_ticks: int | None = None) -> int:
        """Watch until the cluster is stopped (0), or the first look at EC2 fails (3: no credentials, say so)."""
        cfg = self.config()
        async with ec2.EC2.open(cfg.region) as cloud:
            try:
                await self.observe(cloud, cfg)
            except Exception as exc:  # noqa: BLE001 - the one line the operator needs, then exit
                log.error("cannot watch the cluster through EC2 (%s): give the PS instance an instance profile "
                          "allowing ec2:DescribeInstances, ec2:DescribeSpotPriceHistory and ec2:TerminateInstances "
                          "(autostop.instance_profile)", exc)
                return 3
            ticks = 0
            while max_ticks is None or ticks < max_ticks:
                ticks += 1
                cfg = self.config()
                try:
                    obs = await self.observe(cloud, cfg)
                    verdict = decide(obs, cfg.limits)
                    self._write_state(decision=None, cost_usd=round(obs.cost_usd, 9),
                                      usd_per_hour=round(obs.usd_per_hour, 9), elapsed_s=round(obs.elapsed_s, 1),
                                      limits=vars(cfg.limits), run_ended=obs.summary_reason)
                    if cfg.mirror:
                        from shield_ops import mirror

                        await mirror.sync_dir(cfg.mirror, self.root / cfg.run_dir)
                    if verdict is not None:
                        await self.stop_cluster(cloud, cfg, *verdict, seen=obs, tick=ticks)
                        return 0
                except Exception:  # noqa: BLE001 - a transient EC2/S3 error must not end the watch
                    log.exception("supervisor tick failed; retrying in %.0fs", cfg.interval_s)
                await asyncio.sleep(cfg.interval_s)
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shield_ops.supervisor", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the supervisor.json written by shield-ops up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    return asyncio.run(Supervisor(args.config, args.config.resolve().parent).run())


if __name__ == "__main__":
    sys.exit(main())
