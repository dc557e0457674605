"""``up`` end to end (provision -> ssh-ready -> deployed -> started) and the cluster-wide ``status`` probe."""
from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import asyncssh

from shield_ops import deploy, ec2, provision
from shield_ops.config import ClusterConfig
from shield_ops.errors import ShieldOpsError
from shield_ops.nodes import Node, NodeState, resolve, sort_key
from shield_ops.remote import SSHContext, connect, run, wait_ready
from shield_ops.state import ClusterState
from shield_ops.ui import Reporter

log = logging.getLogger(__name__)


class Stage(str, enum.Enum):
    """``up --only`` values: stop after this stage."""

    PROVISION = "provision"
    DEPLOY = "deploy"
    START = "start"


@dataclass
class UpOptions:
    dry_run: bool = False
    only: Stage = Stage.START
    wheel: Path | None = None
    confirm: Callable[[], bool] = lambda: True


async def _per_node(nodes: dict[str, Node], reporter: Reporter,
                    work: Callable[[Node], Awaitable[NodeState | None]]) -> dict[str, Node]:
    """Run ``work`` on every node at once; a node whose work raises is marked failed and dropped."""
    async def one(node: Node) -> Node | None:
        try:
            await work(node)
            return node
        except (ShieldOpsError, asyncssh.Error, OSError) as exc:
            reporter.state(node.name, NodeState.FAILED, str(exc) or type(exc).__name__, node.instance_id)
            return None
    done = await asyncio.gather(*(one(n) for n in nodes.values()))
    return {n.name: n for n in done if n is not None}


async def up(cfg: ClusterConfig, state: ClusterState, ssh: SSHContext, opts: UpOptions, reporter: Reporter) -> int:
    """Bring the cluster to the state the config describes; returns the exit status (1 if any node failed)."""
    async with ec2.ec2_client(cfg.region) as client:
        plan = await provision.make_plan(client, cfg)
        for line in plan.lines(cfg):
            reporter.info(line)
        if opts.dry_run:
            return 0
        if plan.creates_anything and not opts.confirm():
            reporter.info("nothing done")
            return 1
        state.ensure()
        cidr = cfg.operator_cidr if cfg.operator_cidr != "auto" else await provision.detect_cidr()
        nodes = await provision.provision(client, cfg, state, plan, provision.check_cidr(cidr), reporter)
    if opts.only is not Stage.PROVISION and nodes:
        conns: dict[str, asyncssh.SSHClientConnection] = {}
        try:
            nodes = await _ssh_all(cfg, ssh, nodes, conns, reporter)
            nodes = await _deploy_all(cfg, state, opts, nodes, conns, reporter)
            if opts.only is Stage.START:
                await _start_all(cfg, nodes, conns, reporter)
        finally:
            for conn in conns.values():
                conn.close()
    _write_known_hosts(state, nodes)
    if "ps" in nodes and opts.only is Stage.START and not reporter.failed:
        ps = nodes["ps"]
        reporter.info(f"watch: shield-ps watch {ps.public_ip or resolve(ps).host}:{cfg.ps_port} "
                      f"--token-file {state.token_path}")
    return 1 if reporter.failed else 0


async def _ssh_all(cfg: ClusterConfig, ssh: SSHContext, nodes: dict[str, Node],
                   conns: dict[str, asyncssh.SSHClientConnection], reporter: Reporter) -> dict[str, Node]:
    async def work(node: Node) -> None:
        conns[node.name] = await wait_ready(
            ssh, node, cfg.ssh_ready_timeout, cfg.ssh_retry_interval,
            on_attempt=lambda msg: reporter.state(node.name, NodeState.RUNNING, msg))
        reporter.state(node.name, NodeState.SSH_READY, "")
    return await _per_node(nodes, reporter, work)


async def _deploy_all(cfg: ClusterConfig, state: ClusterState, opts: UpOptions, nodes: dict[str, Node],
                      conns: dict[str, asyncssh.SSHClientConnection], reporter: Reporter) -> dict[str, Node]:
    wheel = opts.wheel
    if wheel is None:
        reporter.info("building the wheel (pip wheel --no-deps)")
        wheel = await asyncio.to_thread(deploy.build_wheel, state.root / "wheel")
    digest = deploy.deploy_hash(cfg, wheel, state.token())

    async def work(node: Node) -> None:
        reporter.state(node.name, NodeState.SSH_READY, "deploying")
        changed = await deploy.deploy_node(conns[node.name], cfg, wheel, state.token_path, digest)
        reporter.state(node.name, NodeState.DEPLOYED, "" if changed else "unchanged")
    return await _per_node(nodes, reporter, work)


async def _start_all(cfg: ClusterConfig, nodes: dict[str, Node], conns: dict[str, asyncssh.SSHClientConnection],
                     reporter: Reporter) -> None:
    if "ps" not in nodes:
        for node in nodes.values():
            reporter.state(node.name, NodeState.FAILED, "not started: the PS is not deployed")
        return

    async def start_ps(node: Node) -> None:
        started = await deploy.start_daemon(conns["ps"], "ps", deploy.ps_command(cfg))
        reporter.state("ps", NodeState.DEPLOYED, "waiting for the PS port" if started else "checking")
        await deploy.wait_listening(conns["ps"], cfg.ps_port, cfg.start_timeout)
        reporter.state("ps", NodeState.STARTED, "" if started else "already running")

    if not await _per_node({"ps": nodes["ps"]}, reporter, start_ps):
        for name in nodes:
            if name != "ps":
                reporter.state(name, NodeState.FAILED, "not started: the PS failed")
        return
    ps_host = resolve(nodes["ps"]).cluster_host

    async def start_agent(node: Node) -> None:
        started = await deploy.start_daemon(conns[node.name], "agent", deploy.agent_command(cfg, ps_host, node.name))
        await deploy.check_alive(conns[node.name], "agent", grace_s=1.0 if started else 0.0)
        reporter.state(node.name, NodeState.STARTED, "" if started else "already running")
    await _per_node({n: v for n, v in nodes.items() if n != "ps"}, reporter, start_agent)


def _write_known_hosts(state: ClusterState, nodes: dict[str, Node]) -> None:
    if not state.root.exists():
        return
    entries = {}
    for node in nodes.values():
        try:
            endpoint = resolve(node)
        except LookupError:
            continue
        entries[(endpoint.host, endpoint.port)] = node.instance_id
    state.write_known_hosts(entries)


# ------------------------------------------------------------------------------------------- status
def parse_probe(text: str) -> dict[str, Any]:
    """Parse the node probe's output (untrusted text): deploy marker, daemons, last metrics events."""
    out: dict[str, Any] = {"deployed": None, "daemons": {}, "metrics": []}
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word == "deployed":
            out["deployed"] = rest.strip() or None
        elif word == "daemon":
            role, _, status = rest.partition(" ")
            out["daemons"][role] = status.strip()
        elif word == "metric":
            try:
                event = json.loads(rest)
            except ValueError:
                continue
            if isinstance(event, dict):
                out["metrics"].append(event)
    return out


def ps_progress(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Latest step, loss, evaluation and summary from the PS's metrics events (docs/metrics.md)."""
    progress: dict[str, Any] = {}
    for event in metrics:
        kind = event.get("kind")
        if kind == "job":
            progress["total_steps"] = event.get("total_steps")
        elif kind == "step":
            progress.update(step=event.get("step"), loss=event.get("loss"), lr=event.get("lr"))
        elif kind == "eval":
            progress.update(eval_step=event.get("step"), top1=event.get("top1"))
        elif kind == "summary":
            progress["finished"] = event.get("reason")
    return progress


def _uptime(node: Node, now: dt.datetime) -> float | None:
    if node.launch_time is None:
        return None
    launched = node.launch_time if node.launch_time.tzinfo else node.launch_time.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (now - launched).total_seconds())


async def _probe(ssh: SSHContext, node: Node) -> tuple[NodeState, str, dict[str, Any]]:
    if node.ec2_state != "running":
        return NodeState.PENDING if node.ec2_state == "pending" else NodeState.STOPPED, node.ec2_state, {}
    try:
        conn = await connect(ssh, node, timeout=15)
    except (ShieldOpsError, asyncssh.Error, OSError, asyncio.TimeoutError, LookupError) as exc:
        return NodeState.RUNNING, f"ssh: {getattr(exc, 'reason', None) or exc}", {}
    async with conn:
        probe = parse_probe((await run(conn, deploy.PROBE_SCRIPT, check=False, timeout=30)).stdout)
    daemons = probe["daemons"]
    if "running" in daemons.values():
        return NodeState.STARTED, ", ".join(f"{r} {s}" for r, s in daemons.items()), probe
    if probe["deployed"]:
        detail = ", ".join(f"{r} {s}" for r, s in daemons.items())
        return NodeState.DEPLOYED, detail, probe
    return NodeState.SSH_READY, "", probe


async def status(cfg: ClusterConfig, ssh: SSHContext) -> dict[str, Any]:
    """Every tagged node with its state, addresses, uptime and estimated cost, plus the PS's progress."""
    async with ec2.ec2_client(cfg.region) as client:
        nodes = await ec2.find_instances(client, cfg)
        prices = await ec2.spot_prices(client, {n.instance_type for n in nodes})
    nodes.sort(key=lambda n: sort_key(n.name))
    probes = await asyncio.gather(*(_probe(ssh, n) for n in nodes))
    now = dt.datetime.now(dt.timezone.utc)
    rows, hourly, cost, progress = [], 0.0, 0.0, {}
    for node, (node_state, detail, probe) in zip(nodes, probes):
        price = ec2.hourly_price(prices, node.instance_type, node.zone)
        uptime = _uptime(node, now)
        node_cost = price * uptime / 3600 if price is not None and uptime is not None else None
        hourly += price or 0.0
        cost += node_cost or 0.0
        if node.name == "ps" and probe.get("metrics"):
            progress = ps_progress(probe["metrics"])
        rows.append({"node": node.name, "role": node.role, "instance_id": node.instance_id,
                     "instance_type": node.instance_type, "zone": node.zone, "ec2_state": node.ec2_state,
                     "state": node_state.value, "detail": detail, "public_ip": node.public_ip,
                     "private_ip": node.private_ip, "uptime_s": None if uptime is None else round(uptime),
                     "usd_per_hour": price, "cost_usd": None if node_cost is None else round(node_cost, 4)})
    return {"cluster": cfg.name, "region": cfg.region, "nodes": rows, "usd_per_hour": round(hourly, 4),
            "cost_usd": round(cost, 4), "ps": progress}
