"""``up --watch``: keep the cluster whole until its run ends (self-healing agents, a replaced PS).

Every ``interval`` seconds it looks at the cluster as ``status`` does; when a node is lost (a spot interruption, a
terminated instance) or a daemon is dead, it runs ``up`` again without asking (``--watch`` is the consent): the
lost node is launched, deployed and started, and joins the live PS in its vacated slot (the PS admits an agent into
the lowest free slot). An agent that reported a spot interruption notice (its ``--spot-watch`` wrote
``~/shield/spot-notice``, read by the status probe) counts as lost at once: its instance is tagged
``shield:spot-notice`` and its heir launched within the two-minute notice, the doomed instance being left to EC2. A
replaced PS restores the newest checkpoint from the S3 mirror when one is configured, and the agents are restarted
towards its address. The watch ends when the run has ended (the PS's ``summary`` says ``completed`` or ``failed``; an
``interrupted`` PS, stopped by a signal as its instance goes away, is replaced), when the cluster is gone (``down``,
or the supervisor's autostop), or after ``max_rounds`` looks.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shield_ops import ec2, fmt, lifecycle, survey
from shield_ops.config import ClusterConfig
from shield_ops.errors import ShieldOpsError
from shield_ops.mirror import ENDED
from shield_ops.nodes import NodeState
from shield_ops.remote import SSHContext
from shield_ops.state import ClusterState
from shield_ops.ui import Reporter

log = logging.getLogger(__name__)


def needs_repair(cfg: ClusterConfig, report: dict[str, Any]) -> list[str]:
    """The desired nodes that are not running their daemon (lost, replacing, or with a dead daemon) or whose
    instance is under a spot interruption notice."""
    rows = {row["node"]: row for row in report["nodes"]}
    return [name for name in cfg.node_names()
            if name not in rows or rows[name]["state"] != NodeState.STARTED.value
            or "stopped" in rows[name]["detail"].split("replaced")[0] or rows[name].get("spot_notice")]


def spot_noticed(report: dict[str, Any]) -> dict[str, str]:
    """Instance id -> notice time of the live instances whose agent reported a spot interruption notice."""
    return {row["instance_id"]: row["spot_notice"]["time"] for row in report["nodes"]
            if row.get("spot_notice") and row.get("instance_id")}


async def _repair(cfg: ClusterConfig, state: ClusterState, ssh: SSHContext, opts: lifecycle.UpOptions,
                  reporter: Reporter, report: dict[str, Any]) -> int:
    noticed = spot_noticed(report)
    if noticed:
        reporter.info(f"watch: spot interruption notice on {', '.join(noticed)}: starting the replacement now")
        async with ec2.EC2.open(cfg.region) as cloud:
            await cloud.tag_spot_notice(cfg, noticed)
    return await lifecycle.up(cfg, state, ssh, opts, reporter)


async def watch(cfg: ClusterConfig, state: ClusterState, ssh: SSHContext, opts: lifecycle.UpOptions,
                reporter: Reporter, interval_s: float, max_rounds: int | None = None) -> int:
    """Repair the cluster until its run ends or it is gone; returns 0, or 1 when the last repair failed."""
    opts = dataclasses.replace(opts, confirm=lambda _question: True, quiet=True, resume_from=None)
    status, rounds = 0, 0
    while max_rounds is None or rounds < max_rounds:
        rounds += 1
        try:
            report = await survey.status(cfg, ssh)
        except (ShieldOpsError, BotoCoreError, ClientError, OSError, asyncio.TimeoutError) as exc:
            reporter.info(f"watch: cannot look at the cluster ({exc}); retrying in {interval_s:.0f}s")
            await asyncio.sleep(interval_s)
            continue
        finished = report["ps"].get("finished")
        if finished is not None and ENDED.match(str(finished)):
            reporter.info(f"watch: the run has ended ({finished}); cost {fmt.usd(report['cost_usd'])}")
            return status
        if not any(row["state"] != "lost" for row in report["nodes"]):
            reporter.info("watch: the cluster is gone (down, or its supervisor stopped it)")
            return status
        broken = needs_repair(cfg, report)
        if broken:
            reporter.info(f"watch: repairing {', '.join(broken)}")
            try:
                status = await _repair(cfg, state, ssh, opts, reporter, report)
            except (ShieldOpsError, BotoCoreError, ClientError, OSError, asyncio.TimeoutError) as exc:
                reporter.info(f"watch: the repair failed ({exc}); trying again in {interval_s:.0f}s")
                status = 1
        await asyncio.sleep(interval_s)
    return status
