"""``up`` end to end (provision -> ssh-ready -> deployed -> started) and the cluster-wide ``status`` probe."""
from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import asyncssh

from shield_ops import deploy, ec2, provision
from shield_ops.config import ClusterConfig
from shield_ops.errors import ShieldOpsError
from shield_ops.nodes import Node, NodeState, resolve
from shield_ops.remote import SSHContext, run, wait_ready
from shield_ops.state import ClusterState
from shield_ops.survey import parse_probe, ps_progress, status  # noqa: F401  (the status half of the life cycle)
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
    quiet: bool = False  # print the plan only when it creates something (``--watch`` rounds)


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
    async with ec2.EC2.open(cfg.region) as cloud:
        plan = await provision.make_plan(cloud, cfg)
        for line in plan.lines(cfg) if plan.creates_anything or not opts.quiet else ():
            reporter.info(line)
        if opts.dry_run:
            return 0
        if plan.creates_anything and not opts.confirm():
            reporter.info("nothing done")
            return 1
        state.ensure()
        cidr = cfg.operator_cidr if cfg.operator_cidr != "auto" else await provision.detect_cidr()
        nodes = await provision.provision(cloud, cfg, state, plan, provision.check_cidr(cidr), reporter)
        if cfg.host_keys == "pin" and ssh.host_keys != "insecure":
            from shield_ops.adopt import adopt_host_keys

            for name, what in (await adopt_host_keys(cloud, state, list(nodes.values()))).items():
                reporter.info(f"{name} ({nodes[name].instance_id}): {what}")
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
        wheel = opts.wheel = await asyncio.to_thread(deploy.build_wheel, state.root / "wheel")
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
        conn = conns["ps"]
        running = await run(conn, deploy.alive_script("ps"), check=False, what="checking the PS")
        if running.exit_status == 0:
            run_dir = (await run(conn, f"cd \"$HOME/shield\" && {deploy.CURRENT_RUN}echo $d")).stdout.strip()
            started = False
        else:
            restored = await deploy.restore_from_mirror(conn, cfg, node.incarnation or "") if cfg.mirrored else None
            if restored is not None:
                run_dir = restored
                reporter.info(f"ps: restored the newest checkpoint of {restored} from s3://{cfg.mirror_bucket}/"
                              f"{cfg.mirror_prefix}; the PS resumes from it")
            else:
                run_dir, new = await deploy.choose_run_dir(conn, resume="--resume" in cfg.ps.args)
                if new:
                    reporter.info(f"the PS's previous run has ended: starting a new run in ~/shield/{run_dir} "
                                  "(add --resume to ps.args to continue the previous one instead)")
            started = await deploy.start_daemon(conn, "ps", deploy.ps_command(cfg, run_dir, resume=bool(restored),
                                                                          host=resolve(node).cluster_host))
        reporter.state("ps", NodeState.DEPLOYED, "waiting for the PS port" if started else "checking")
        await deploy.wait_listening(conn, cfg.ps_port, cfg.start_timeout, resolve(node).cluster_host)
        if cfg.supervised:
            reporter.state("ps", NodeState.DEPLOYED, "starting the supervisor (autostop)")
            await deploy.start_supervisor(conn, cfg, run_dir, cfg.start_timeout, node.incarnation or "")
        reporter.state("ps", NodeState.STARTED, f"{'' if started else 'already running; '}train dir ~/shield/{run_dir}"
                       + ("; supervised" if cfg.supervised else ""))

    if not await _per_node({"ps": nodes["ps"]}, reporter, start_ps):
        for name in nodes:
            if name != "ps":
                reporter.state(name, NodeState.FAILED, "not started: the PS failed")
        return
    ps_host = resolve(nodes["ps"]).cluster_host

    async def start_agent(node: Node) -> None:
        if await deploy.stop_if_target_changed(conns[node.name], f"{ps_host}:{cfg.ps_port}"):
            reporter.state(node.name, NodeState.DEPLOYED, "the PS moved: restarting the agent towards it")
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
