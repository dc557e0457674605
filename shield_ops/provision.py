"""The provisioning stage of ``up`` and the whole of ``down``: plan, key pair, security group, spot instances.

Idempotent by construction: the plan is computed from what EC2 reports under the cluster tag, so a second ``up``
keeps everything and launches only nodes that are missing (e.g. an agent lost to a spot interruption, or one under a
spot interruption notice: ``up --watch`` tags it ``shield:spot-notice`` and it no longer counts as its node).
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from shield_ops import autostop, boot, ec2, fmt
from shield_ops.boot import BootLimits
from shield_ops.cloud import Cloud, LaunchSpec
from shield_ops.config import ClusterConfig
from shield_ops.cost import Ledger
from shield_ops.errors import ProvisionError, ShieldOpsError
from shield_ops.nodes import Node, NodeState, sort_key
from shield_ops.state import LEDGER_FILE, ClusterState
from shield_ops.ui import Reporter

log = logging.getLogger(__name__)

CHECKIP = ("checkip.amazonaws.com", 80)


@dataclass
class Plan:
    """What ``up`` will create and keep, with the estimated hourly price of the whole cluster."""

    vpc_id: str
    subnets: dict[str, str]
    key_pair: dict[str, Any] | None
    security_group: dict[str, Any] | None
    keep: dict[str, Node]
    launch: list[str]
    duplicates: list[Node] = field(default_factory=list)
    hourly_usd: float | None = None
    boot: BootLimits | None = None  # the watchdog limits of what this ``up`` launches (set by :func:`provision`)

    @property
    def terminate(self) -> list[Node]:
        """Instances ``up`` terminates: nodes the config no longer has (scale-down) and duplicates of a node."""
        return [n for n in self.duplicates if n.ec2_state in ("pending", "running", "stopped")]

    @property
    def creates_anything(self) -> bool:
        """Whether ``up`` would change anything in EC2 (create, launch or terminate): then it asks first."""
        return self.key_pair is None or self.security_group is None or bool(self.launch) or bool(self.terminate)

    def lines(self, cfg: ClusterConfig) -> list[str]:
        def verb(thing: Any) -> str:
            return "keep  " if thing is not None else "create"
        out = [f"cluster {cfg.name} in {cfg.region} (vpc {self.vpc_id}, zones {', '.join(self.subnets)})",
               f"  {verb(self.key_pair)} key pair {cfg.resource_name}",
               f"  {verb(self.security_group)} security group {cfg.resource_name} "
               f"(ssh + port {cfg.ps_port} from {cfg.operator_cidr}, all traffic within the group)"]
        for name in sorted(set(self.keep) | set(self.launch), key=sort_key):
            if name in self.keep:
                node = self.keep[name]
                out.append(f"  keep   {name}: {node.instance_id} {node.instance_type} {node.zone} {node.ec2_state}")
            else:
                types = (cfg.ps if name == "ps" else cfg.agents).instance_types
                out.append(f"  launch {name}: spot {' | '.join(types)}")
        desired = set(cfg.node_names())
        for node in self.terminate:
            why = ("replaced after a spot interruption notice" if node.spot_notice is not None
                   else "a duplicate of that node" if node.name in desired else "not in the config (scale-down)")
            out.append(f"  terminate {node.name}: {node.instance_id} {node.instance_type} ({why})")
        price = f"{fmt.usd(self.hourly_usd)}/h" if self.hourly_usd is not None else "unknown (no spot price history)"
        out.append(f"  estimated spot price of the whole cluster: {price}")
        return out

    def question(self, cfg: ClusterConfig) -> str:
        """What confirming does: create (key pair, group, instances), terminate, or both."""
        creates = (["key pair"] if self.key_pair is None else []) + (
            ["security group"] if self.security_group is None else []) + (
            [f"{len(self.launch)} spot instance(s) ({', '.join(self.launch)})"] if self.launch else [])
        parts = [f"create {', '.join(creates)}"] if creates else []
        if self.terminate:
            parts.append(f"terminate {len(self.terminate)} instance(s) "
                         f"({', '.join(f'{n.name} {n.instance_id}' for n in self.terminate)})")
        return f"{' and '.join(parts) or 'change nothing'} for cluster {cfg.name}?"


def guard_lines(cfg: ClusterConfig, resume_from: str | None = None) -> list[str]:
    """The plan's limits and mirror: what guards the bill and the run, and from when."""
    limits = (["down when the run ends or its PS fails to start"] if cfg.down_when_done else []) + (
        [f"at most {fmt.sig(cfg.max_hours, 3)} h from the first launch"] if cfg.max_hours is not None else []) + (
        [f"at most {fmt.usd(cfg.max_cost)} (terminated instances count)"] if cfg.max_cost is not None else [])
    idle = f"every instance ends itself after {fmt.duration(cfg.idle_minutes * 60)} idle" if cfg.idle_minutes \
        else "no idle bound (autostop.idle_minutes = 0)"
    if limits:
        out = [f"  limits: {'; '.join(limits)}: held by the supervisor on the PS node, and from boot by each "
               f"instance's own watchdog (deadline + {boot.GRACE_S + 2 * cfg.autostop_interval:g}s grace); {idle}"]
    else:
        out = [f"  limits: none (--max-cost, --max-hours, --down-when-done unset); {idle}"]
    if cfg.mirrored:
        out.append(f"  mirror: s3://{cfg.mirror_bucket}/{cfg.mirror_prefix}/<life>/<run>: checkpoints and metrics of "
                   "this life's runs; a replacement PS resumes its life's run from it")
    else:
        out.append("  mirror: none ([mirror] bucket unset): a lost PS node loses its run")
    if resume_from:
        out.append(f"  resume: {resume_from} (the new PS continues that run; it must have the same configuration "
                   "hash)")
    return out


async def detect_cidr(timeout: float = 10.0) -> str:
    """The operator's public address as a /32 (plain HTTP to checkip.amazonaws.com)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*CHECKIP), timeout)
        writer.write(f"GET / HTTP/1.1\r\nHost: {CHECKIP[0]}\r\nConnection: close\r\n\r\n".encode())
        body = (await asyncio.wait_for(reader.read(4096), timeout)).split(b"\r\n\r\n", 1)[-1]
        writer.close()
        return f"{ipaddress.ip_address(body.decode().strip())}/32"
    except (OSError, asyncio.TimeoutError, ValueError, UnicodeDecodeError) as exc:
        raise ShieldOpsError(f"network.operator_cidr = \"auto\": cannot detect your address ({exc}); "
                             "write it explicitly, e.g. \"203.0.113.7/32\"") from None


def _split_duplicates(nodes: list[Node]) -> tuple[dict[str, Node], list[Node]]:
    keep: dict[str, Node] = {}
    extra: list[Node] = []
    def order(n: Node) -> tuple[Any, ...]:  # a live instance is the node; one going away is the duplicate
        return (n.ec2_state not in ("pending", "running"), n.launch_time is None, n.launch_time or 0, n.instance_id)
    for node in sorted(nodes, key=order):
        (extra.append(node) if node.name in keep else keep.__setitem__(node.name, node))
    return keep, extra


async def make_plan(cloud: Cloud, cfg: ClusterConfig) -> Plan:
    """Compare the desired nodes with what carries the cluster tag."""
    vpc_id = await cloud.resolve_vpc(cfg)
    subnets = await cloud.subnets_by_zone(cfg, vpc_id)
    key = await cloud.find_key_pair(cfg)
    group = await cloud.find_security_group(cfg, vpc_id)
    instances = await cloud.find_instances(cfg)
    found, duplicates = _split_duplicates([n for n in instances if n.spot_notice is None])
    desired = cfg.node_names()
    keep = {n: found[n] for n in desired if n in found}
    duplicates += [node for name, node in found.items() if name not in desired]
    # under a spot notice (tagged by ``up --watch``): replaced now, left to EC2 until the heir exists, then terminated
    duplicates += [n for n in instances if n.spot_notice is not None and n.name in found]
    launch = [n for n in desired if n not in found]
    prices = await cloud.spot_prices(set(cfg.ps.instance_types) | set(cfg.agents.instance_types))
    return Plan(vpc_id, subnets, key, group, keep, launch, duplicates, _estimate(cfg, prices, keep, launch))


def _estimate(cfg: ClusterConfig, prices: dict[tuple[str, str], float], keep: dict[str, Node],
              launch: list[str]) -> float | None:
    total = 0.0
    for node in keep.values():
        price = ec2.hourly_price(prices, node.instance_type, node.zone)
        if price is None:
            return None
        total += price
    for name in launch:
        price = ec2.hourly_price(prices, (cfg.ps if name == "ps" else cfg.agents).instance_types[0])
        if price is None:
            return None
        total += price
    return total


def user_data(cfg: ClusterConfig, host_key: asyncssh.SSHKey, limits: BootLimits | None = None) -> str:
    """cloud-init user data pinning the node's SSH host key (generated here), installing the venv module, and
    starting the instance's watchdog at boot with ``limits`` (see :mod:`shield_ops.boot`)."""
    private = host_key.export_private_key("openssh").decode()
    public = host_key.export_public_key("openssh").decode().strip()
    indented = "".join(f"    {line}\n" for line in private.splitlines())
    limits = limits or boot.limits_for(cfg, time.time(), None, 0.0, None)
    return ("#cloud-config\nssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n"
            f"{indented}  ed25519_public: {public}\npackages: [python3-venv, python3-pip]\n"
            + boot.cloud_config_bootcmd(cfg, limits))


def pinned_type(cfg: ClusterConfig, role: str, keep: dict[str, Node]) -> str | None:
    """The instance type new nodes of ``role`` must have: that of the role's live nodes (honest replicas are
    bit-equal only on one type), unless ``spot.mixed_types``; None when the role has no node of a configured type."""
    if cfg.mixed_types:
        return None
    allowed = (cfg.ps if role == "ps" else cfg.agents).instance_types
    types = [n.instance_type for n in keep.values() if n.role == role and n.ec2_state in ("pending", "running")]
    for itype in allowed:
        if itype in types:
            return itype
    return None


async def _launch_one(cloud: Cloud, cfg: ClusterConfig, state: ClusterState, plan: Plan, group_id: str,
                      name: str, reporter: Reporter, types: tuple[str, ...] | None = None) -> Node | None:
    role = "ps" if name == "ps" else "agent"
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    spec = LaunchSpec(name, role, types or (cfg.ps if role == "ps" else cfg.agents).instance_types,
                      user_data(cfg, host_key, plan.boot))
    reporter.state(name, NodeState.PENDING, "requesting spot capacity")
    try:
        node = await cloud.launch(cfg, spec, plan.subnets, group_id,
                                  on_retry=lambda msg: reporter.state(name, NodeState.PENDING, msg))
    except ShieldOpsError as exc:
        reporter.state(name, NodeState.FAILED, str(exc))
        return None
    if cfg.host_keys == "pin":
        state.record_host_key(node.instance_id, host_key)
    reporter.state(name, NodeState.PENDING, f"{node.instance_type} in {node.zone}", node.instance_id)
    return node


async def _launch_role(cloud: Cloud, cfg: ClusterConfig, state: ClusterState, plan: Plan, group_id: str,
                       role: str, reporter: Reporter) -> list[Node | None]:
    """Launch the plan's missing nodes of ``role``: all of one instance type (that of the role's live nodes, else
    the type the first launch found capacity for), unless ``spot.mixed_types``."""
    names = [n for n in plan.launch if ("ps" if n == "ps" else "agent") == role]
    fixed = pinned_type(cfg, role, plan.keep)
    launched: list[Node | None] = []
    if names and fixed is None and not cfg.mixed_types and len(names) > 1:
        first = await _launch_one(cloud, cfg, state, plan, group_id, names[0], reporter)
        launched.append(first)
        names, fixed = names[1:], first.instance_type if first is not None else None
    launched += await asyncio.gather(*(_launch_one(cloud, cfg, state, plan, group_id, n, reporter,
                                                   (fixed,) if fixed else None) for n in names))
    return launched


async def _settle(cloud: Cloud, cfg: ClusterConfig, plan: Plan, group_id: str, reporter: Reporter) -> None:
    """Before launching: the plan's terminations (scale-down, duplicates, noticed instances with an heir), and the
    kept nodes reported."""
    if plan.terminate:
        await cloud.terminate(cfg, plan.terminate)
        for node in plan.terminate:
            reporter.info(f"terminated {node.name} ({node.instance_id}): "
                          f"{'duplicate' if node.name in cfg.node_names() else 'scale-down'}")
    for name, node in plan.keep.items():
        reporter.state(name, NodeState.PENDING if node.ec2_state == "pending" else NodeState.RUNNING,
                       "kept", node.instance_id)


async def provision(cloud: Cloud, cfg: ClusterConfig, state: ClusterState, plan: Plan, cidr: str,
                    reporter: Reporter) -> dict[str, Node]:
    """Create what the plan lacks, wait for every node to run; returns the running nodes by name."""
    if plan.key_pair is None:
        await cloud.import_key_pair(cfg, state.public_key_openssh())
        reporter.info(f"created key pair {cfg.resource_name}")
    group_id, created = await cloud.ensure_security_group(cfg, plan.vpc_id, cidr)
    if created:
        reporter.info(f"created security group {group_id}")
    await _settle(cloud, cfg, plan, group_id, reporter)
    if plan.launch:
        plan.boot = await boot_limits(cloud, cfg, state, plan)
        reporter.info(f"new instances: {plan.boot.describe()} (their own watchdog, from boot)")
    launched: list[Node | None] = []
    for role in ("ps", "agent"):
        launched += await _launch_role(cloud, cfg, state, plan, group_id, role, reporter)
    nodes = {**plan.keep, **{n.name: n for n in launched if n is not None}}
    stopped = [n for n in nodes.values() if n.ec2_state in ("stopping", "stopped", "shutting-down")]
    for node in stopped:
        reporter.state(node.name, NodeState.FAILED, f"instance is {node.ec2_state}; `down` then `up` replaces it")
    waiting = [n.instance_id for n in nodes.values() if n not in stopped]
    await cloud.wait_running(waiting)
    running = {n.name: n for n in await cloud.describe(waiting)}
    for node in running.values():
        reporter.state(node.name, NodeState.RUNNING, node.public_ip or node.private_ip or "", node.instance_id)
    return running


async def down(cloud: Cloud, cfg: ClusterConfig, state: ClusterState, reporter: Reporter, confirm: Any) -> int:
    """Terminate every tagged instance, wait, then delete the tagged security group(s) and key pair."""
    nodes = await cloud.find_instances(cfg)
    groups = await cloud.security_groups(cfg)
    key = await cloud.key_pairs(cfg)
    if not nodes and not groups and not key:
        reporter.info(f"cluster {cfg.name}: nothing tagged shield:cluster={cfg.name} in {cfg.region}")
        state.destroy()
        return 0
    await _report_cost(cloud, cfg, state, reporter, "so far")
    record = autostop.from_groups(groups) or autostop.Record.parse(state.load_autostop() or "")
    if record is not None:
        reporter.info(f"autostop: {record.line()}")
    reporter.info(f"cluster {cfg.name}: terminate {len(nodes)} instance(s) "
                  f"({', '.join(sorted((n.name for n in nodes), key=sort_key)) or 'none'}), delete "
                  f"{len(groups)} security group(s) and {len(key)} key pair(s)")
    if not confirm(f"terminate {len(nodes)} instance(s) and delete the security group(s) and key pair of cluster "
                   f"{cfg.name}?"):
        return 1
    for node in nodes:
        reporter.state(node.name, NodeState.TERMINATING, "", node.instance_id)
    await cloud.terminate(cfg, nodes)
    await cloud.wait_terminated([n.instance_id for n in nodes])
    for node in nodes:
        reporter.state(node.name, NodeState.TERMINATED, "", node.instance_id)
    await _report_cost(cloud, cfg, state, reporter, "in all")
    for group in groups:
        await cloud.delete_security_group(group["GroupId"])
        reporter.info(f"deleted security group {group['GroupId']}")
    for pair in key:
        await cloud.delete_key_pair(pair)
        reporter.info(f"deleted key pair {pair['KeyName']}")
    state.destroy()
    return 0


async def life_ledger(cloud: Cloud, cfg: ClusterConfig, state: ClusterState) -> Ledger:
    """Every instance of the cluster's current life EC2 or the local ledger knows (terminated ones too), priced."""
    found = ec2.of_incarnation(await cloud.find_instances(cfg, include_gone=True), await cloud.incarnations(cfg))
    ledger = Ledger(state.root / LEDGER_FILE if state.root.is_dir() else None)
    ledger.observe(found, await cloud.spot_prices({n.instance_type for n in found}), time.time())
    ledger.save()
    return ledger


async def boot_limits(cloud: Cloud, cfg: ClusterConfig, state: ClusterState, plan: Plan) -> BootLimits:
    """The watchdog limits of instances launched now: the life's first launch and its cost so far, and the plan's
    estimated price of the whole cluster."""
    ledger = await life_ledger(cloud, cfg, state)
    now = time.time()
    start = min((e.launched for e in ledger.entries.values()), default=None)
    return boot.limits_for(cfg, now, start, ledger.total(now), plan.hourly_usd)


async def _report_cost(cloud: Cloud, cfg: ClusterConfig, state: ClusterState, reporter: Reporter, when: str) -> None:
    """One line: what the cluster has cost (every instance EC2 or the local ledger knows, terminated ones too)."""
    ledger = await life_ledger(cloud, cfg, state)
    reporter.info(f"cost {when}: {fmt.usd(ledger.total(time.time()))} over {len(ledger.entries)} instance(s) "
                  f"(spot price history; terminated instances included), {fmt.usd(ledger.hourly())}/h while running")


def check_cidr(cidr: str) -> str:
    if ipaddress.ip_network(cidr).prefixlen == 0:
        raise ProvisionError("refusing an operator CIDR that opens the cluster to the whole internet")
    return cidr
