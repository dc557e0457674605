"""``up`` end to end (provision -> ssh-ready -> deployed -> started) and the cluster-wide ``status`` probe."""
from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from shield_ops import autostop, deploy, ec2, provision
from shield_ops.boot import BootLimits
from shield_ops.cloud import Cloud
from shield_ops.config import ClusterConfig
from shield_ops.errors import RemoteError, ShieldOpsError
from shield_ops.nodes import Node, NodeState, resolve
from shield_ops.remote import SSHContext, run, wait_ready
from shield_ops.state import ClusterState
from shield_ops.survey import parse_probe, ps_progress, status  # noqa: F401  (the status half of the life cycle)
from shield_ops.ui import Reporter

log = logging.getLogger(__name__)

#: seconds past ``deploy.start_timeout`` by which a PS ``up`` is starting must have started, or the supervisor ends
#: the cluster (under ``down_when_done``): ``up`` was interrupted.
START_SLACK_S = 60.0


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
    confirm: Callable[[str], bool] = lambda _question: True
    quiet: bool = False  # print the plan only when it creates something (``--watch`` rounds)
    resume_from: str | None = None  # ``up --resume-from s3://...``: the run of another life the new PS continues


@dataclass
class Bringing:
    """One ``up`` past provisioning: its nodes' SSH connections, their watchdog limits, what was started."""

    cfg: ClusterConfig
    state: ClusterState
    ssh: SSHContext
    opts: UpOptions
    reporter: Reporter
    limits: BootLimits
    conns: dict[str, asyncssh.SSHClientConnection] = field(default_factory=dict)
    supervised: bool = False  # the supervisor runs on the PS node (it, not ``up``, ends a failed start)


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


async def _plan(cloud: Cloud, cfg: ClusterConfig, opts: UpOptions, reporter: Reporter) -> provision.Plan:
    """Read the account (it needs credentials: say so plainly), and print the plan with its limits and mirror."""
    source = await cloud.credentials_source()
    if source is None:
        raise ShieldOpsError("up reads the account to plan (DescribeVpcs, DescribeSubnets, DescribeInstances, "
                             "DescribeSpotPriceHistory, ...), --dry-run included, and found no AWS credentials: set "
                             "AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run where an instance role "
                             "applies")
    plan = await provision.make_plan(cloud, cfg)
    if plan.creates_anything or not opts.quiet:
        for line in plan.lines(cfg) + provision.guard_lines(cfg, opts.resume_from):
            reporter.info(line)
    if opts.dry_run:
        reporter.info(f"dry run: planned from EC2 with the AWS credentials found ({source}) by read-only calls; "
                      "nothing was created or changed")
    return plan


async def _provision(cloud: Cloud, cfg: ClusterConfig, state: ClusterState, ssh: SSHContext, opts: UpOptions,
                     reporter: Reporter) -> tuple[dict[str, Node], BootLimits] | None:
    """Plan, confirm, provision, adopt half-launched nodes; the running nodes and their watchdog limits, or None
    when nothing is to be done (a dry run, or no confirmation)."""
    plan = await _plan(cloud, cfg, opts, reporter)
    if opts.dry_run:
        return None
    if plan.creates_anything and not opts.confirm(plan.question(cfg)):
        reporter.info("nothing done")
        return None
    state.ensure()
    cidr = cfg.operator_cidr if cfg.operator_cidr != "auto" else await provision.detect_cidr()
    nodes = await provision.provision(cloud, cfg, state, plan, provision.check_cidr(cidr), reporter)
    if cfg.host_keys == "pin" and ssh.host_keys != "insecure":
        from shield_ops.adopt import adopt_host_keys

        for name, what in (await adopt_host_keys(cloud, state, list(nodes.values()))).items():
            reporter.info(f"{name} ({nodes[name].instance_id}): {what}")
    return nodes, plan.boot or await provision.boot_limits(cloud, cfg, state, plan)


async def up(cfg: ClusterConfig, state: ClusterState, ssh: SSHContext, opts: UpOptions, reporter: Reporter) -> int:
    """Bring the cluster to the state the config describes; returns the exit status (1 if any node failed, or when
    a change was not confirmed)."""
    async with ec2.EC2.open(cfg.region) as cloud:
        provisioned = await _provision(cloud, cfg, state, ssh, opts, reporter)
    if provisioned is None:
        return 0 if opts.dry_run else 1
    nodes, limits = provisioned
    if opts.only is not Stage.PROVISION and nodes:
        bringing = Bringing(cfg, state, ssh, opts, reporter, limits)
        try:
            await _bring_up(bringing, nodes)
        finally:
            for conn in bringing.conns.values():
                conn.close()
        if cfg.down_when_done and opts.only is Stage.START and "ps" in reporter.failed:
            await _failed_start(bringing, nodes.get("ps"))
    _write_known_hosts(state, nodes)
    if "ps" in nodes and opts.only is Stage.START and not reporter.failed:
        ps = nodes["ps"]
        reporter.info(f"watch: shield-ps watch {ps.public_ip or resolve(ps).host}:{cfg.ps_port} "
                      f"--token-file {state.token_path}")
    return 1 if reporter.failed else 0


async def _bring_up(ctx: Bringing, nodes: dict[str, Node]) -> None:
    nodes = await _ssh_all(ctx, nodes)
    nodes = await _deploy_all(ctx, nodes)
    if ctx.opts.only is Stage.START:
        await _start_all(ctx, nodes)


async def _ssh_all(ctx: Bringing, nodes: dict[str, Node]) -> dict[str, Node]:
    async def work(node: Node) -> None:
        ctx.conns[node.name] = await wait_ready(
            ctx.ssh, node, ctx.cfg.ssh_ready_timeout, ctx.cfg.ssh_retry_interval,
            on_attempt=lambda msg: ctx.reporter.state(node.name, NodeState.RUNNING, msg))
        ctx.reporter.state(node.name, NodeState.SSH_READY, "")
    return await _per_node(nodes, ctx.reporter, work)


async def _deploy_all(ctx: Bringing, nodes: dict[str, Node]) -> dict[str, Node]:
    wheel = ctx.opts.wheel
    if wheel is None:
        ctx.reporter.info("building the wheel (pip wheel --no-deps)")
        wheel = ctx.opts.wheel = await asyncio.to_thread(deploy.build_wheel, ctx.state.root / "wheel")
    digest = deploy.deploy_hash(ctx.cfg, wheel, ctx.state.token())

    async def work(node: Node) -> None:
        ctx.reporter.state(node.name, NodeState.SSH_READY, "deploying")
        changed = await deploy.deploy_node(ctx.conns[node.name], ctx.cfg, wheel, ctx.state.token_path, digest)
        await deploy.write_limits(ctx.conns[node.name], ctx.limits)
        ctx.reporter.state(node.name, NodeState.DEPLOYED, "" if changed else "unchanged")
    return await _per_node(nodes, ctx.reporter, work)


async def _ps_run_dir(ctx: Bringing, conn: asyncssh.SSHClientConnection, node: Node) -> tuple[str, bool]:
    """The run the PS about to start serves, and whether it resumes a checkpoint: this life's mirrored run, an
    older life's run named by ``--resume-from``, or (no mirror) the node's own run directory."""
    cfg, info = ctx.cfg, ctx.reporter.info
    restored = await deploy.restore_run(conn, cfg, node.incarnation or "", ctx.opts.resume_from)
    if restored is None:
        run_dir, new = await deploy.choose_run_dir(conn, resume="--resume" in cfg.ps.args)
        if new:
            info(f"the PS's previous run has ended: starting a new run in ~/shield/{run_dir} "
                 "(add --resume to ps.args to continue the previous one instead)")
        return run_dir, False
    if restored.resumed:
        info(f"ps: restored the newest checkpoint (step {restored.step}) of {restored.source} into "
             f"~/shield/{restored.run}; the PS resumes from it and checks its configuration hash "
             f"({restored.config_hash or 'unknown'})")
    else:
        info(f"ps: a new run ~/shield/{restored.run} (this life's mirror holds no run that can go on)")
    return restored.run, restored.resumed


async def _start_ps(ctx: Bringing, node: Node) -> None:
    cfg, conn, host = ctx.cfg, ctx.conns["ps"], resolve(node).cluster_host
    await run(conn, deploy.ended_ps_exit_script(cfg.start_timeout), timeout=cfg.start_timeout + 30,
              what="waiting for a PS whose run ended to exit")
    running = await run(conn, deploy.alive_script("ps"), check=False, what="checking the PS")
    if running.exit_status == 0:
        if ctx.opts.resume_from:
            raise RemoteError("--resume-from: the PS already runs a run; `down` the cluster, then `up --resume-from`")
        run_dir = (await run(conn, f"cd \"$HOME/shield\" && {deploy.CURRENT_RUN}echo $d")).stdout.strip()
        await _start_supervisor(ctx, node, run_dir, start_by=0.0)
        await deploy.wait_listening(conn, cfg.ps_port, cfg.start_timeout, host)
        ctx.reporter.state("ps", NodeState.STARTED, f"already running; train dir ~/shield/{run_dir}"
                           + ("; supervised" if cfg.supervised else ""))
        return
    run_dir, resume = await _ps_run_dir(ctx, conn, node)
    await run(conn, "rm -f shield/ps.pid", what="clearing the stale PS pidfile")
    await _start_supervisor(ctx, node, run_dir, start_by=time.time() + cfg.start_timeout + START_SLACK_S)
    jobs = await deploy.job_count(conn, run_dir)
    await deploy.start_daemon(conn, "ps", deploy.ps_command(cfg, run_dir, resume=resume, host=host))
    ctx.reporter.state("ps", NodeState.DEPLOYED, "waiting for the PS to listen and begin its run")
    await deploy.wait_started(conn, cfg.ps_port, cfg.start_timeout, host, run_dir, jobs)
    ctx.reporter.state("ps", NodeState.STARTED, f"train dir ~/shield/{run_dir}" + ("; supervised" if cfg.supervised
                                                                                  else ""))


async def _start_supervisor(ctx: Bringing, node: Node, run_dir: str, start_by: float) -> None:
    if not ctx.cfg.supervised:
        return
    ctx.reporter.state("ps", NodeState.DEPLOYED, "starting the supervisor (autostop)")
    await deploy.start_supervisor(ctx.conns["ps"], ctx.cfg, run_dir, ctx.cfg.start_timeout, node.incarnation or "",
                                  start_by)
    ctx.supervised = True


async def _start_all(ctx: Bringing, nodes: dict[str, Node]) -> None:
    cfg, reporter = ctx.cfg, ctx.reporter
    if "ps" not in nodes:
        for node in nodes.values():
            reporter.state(node.name, NodeState.FAILED, "not started: the PS is not deployed")
        return
    if not await _per_node({"ps": nodes["ps"]}, reporter, lambda node: _start_ps(ctx, node)):
        for name in nodes:
            if name != "ps":
                reporter.state(name, NodeState.FAILED, "not started: the PS failed")
        return
    ps_host = resolve(nodes["ps"]).cluster_host

    async def start_agent(node: Node) -> None:
        conn = ctx.conns[node.name]
        if await deploy.stop_if_target_changed(conn, f"{ps_host}:{cfg.ps_port}"):
            reporter.state(node.name, NodeState.DEPLOYED, "the PS moved: restarting the agent towards it")
        started = await deploy.start_daemon(conn, "agent", deploy.agent_command(cfg, ps_host, node.name))
        await deploy.check_alive(conn, "agent", grace_s=1.0 if started else 0.0)
        reporter.state(node.name, NodeState.STARTED, "" if started else "already running")
    await _per_node({n: v for n, v in nodes.items() if n != "ps"}, reporter, start_agent)


async def _failed_start(ctx: Bringing, ps: Node | None) -> None:
    """``--down-when-done`` and the PS did not start: the run has ended before it began, so the cluster ends. The
    supervisor does it when it runs (it saw the PS exit, or no PS by its deadline); else ``up`` does it here."""
    why = ctx.reporter.failed.get("ps", "the PS did not start")
    if ctx.supervised:
        ctx.reporter.info(f"--down-when-done: the PS failed to start, so the supervisor on the PS node ends the "
                          f"cluster within about {ctx.cfg.autostop_interval:g}s and records why (`shield-ops status`)")
        return
    life = ps.incarnation if ps is not None else None
    async with ec2.EC2.open(ctx.cfg.region) as cloud:
        ledger = await provision.life_ledger(cloud, ctx.cfg, ctx.state)
        life = life or next(iter(await cloud.incarnations(ctx.cfg)), None)
        record = autostop.Record(autostop.Reason.FAILED_START.value, f"the PS did not start: {why}"[:1000],
                                 time.time(), round(ledger.total(time.time()), 9), life=life,
                                 limits={"down_when_done": True, "max_hours": ctx.cfg.max_hours,
                                         "max_cost": ctx.cfg.max_cost})
        mirror = ({"bucket": ctx.cfg.mirror_bucket, "prefix": ctx.cfg.mirror_prefix, "region": ctx.cfg.region,
                   "life": life or ""} if ctx.cfg.mirrored else None)
        await autostop.publish(cloud, ctx.cfg, record, mirror)
        ctx.state.save_autostop(record.to_json())
        live = await cloud.find_instances(ctx.cfg)
        await cloud.terminate(ctx.cfg, live)
    ctx.reporter.info(f"--down-when-done: the PS did not start, so `up` terminated the cluster's {len(live)} "
                      "instance(s) (`shield-ops down` deletes its security group and key pair)")


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
