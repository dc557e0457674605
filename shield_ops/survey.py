"""``status``: every node the cluster has had (lost and replaced ones with their history), what each runs, the cost
so far (terminated instances included) and its projection, the PS's progress and the supervisor's state."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from shield_ops import autostop, cost, deploy, ec2
from shield_ops.config import ClusterConfig
from shield_ops.errors import ShieldOpsError
from shield_ops.nodes import Node, NodeState, sort_key
from shield_ops.remote import SSHContext, connect, run
from shield_ops.state import LEDGER_FILE


def parse_probe(text: str) -> dict[str, Any]:
    """Parse the node probe's output (untrusted text): deploy marker, daemons, last metrics events, supervisor."""
    out: dict[str, Any] = {"deployed": None, "daemons": {}, "metrics": [], "run": None, "autostop": None,
                           "spot": None}
    for line in text.splitlines():
        word, _, rest = line.partition(" ")
        if word == "deployed":
            out["deployed"] = rest.strip() or None
        elif word == "run":
            out["run"] = rest.strip()[:64] or None
        elif word == "daemon":
            role, _, state = rest.partition(" ")
            out["daemons"][role] = state.strip()
        elif word == "spot":
            out["spot"] = _spot_notice(rest)
        elif word in ("metric", "autostop"):
            try:
                event = json.loads(rest)
            except ValueError:
                continue
            if isinstance(event, dict):
                out["metrics"].append(event) if word == "metric" else out.__setitem__("autostop", event)
    return out


def _spot_notice(text: str) -> dict[str, str] | None:
    """An agent's spot notice file ({"action", "time"}, written by shield_agent.spot), or None if malformed."""
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), str) for k in ("action", "time")):
        return None
    return {"action": doc["action"][:16], "time": doc["time"][:64]}


def ps_progress(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Latest step, loss, evaluation and summary from the PS's metrics events (docs/metrics.md); a ``job`` after a
    summary (a resumed run) means the run goes on."""
    progress: dict[str, Any] = {}
    for event in metrics:
        kind = event.get("kind")
        if kind == "job":
            for key in ("finished", "steps_trained", "resumed_from"):
                progress.pop(key, None)
            progress.update(total_steps=event.get("total_steps"), start_step=event.get("start_step"),
                            job_time=event.get("time"))
        elif kind == "step":
            progress.update(step=event.get("step"), loss=event.get("loss"), lr=event.get("lr"),
                            step_time=event.get("time"))
        elif kind == "eval":
            progress.update(eval_step=event.get("step"), top1=event.get("top1"))
        elif kind == "summary":
            progress.update(finished=event.get("reason"), steps_trained=event.get("steps_trained"),
                            resumed_from=event.get("resumed_from"))
    return {k: v for k, v in progress.items() if v is not None}


async def probe(ssh: SSHContext, node: Node) -> tuple[NodeState, str, dict[str, Any]]:
    """The state of one live node as seen over SSH (daemons, deploy marker, metrics)."""
    if node.ec2_state != "running":
        return NodeState.PENDING if node.ec2_state == "pending" else NodeState.STOPPED, node.ec2_state, {}
    try:
        conn = await connect(ssh, node, timeout=15)
    except (ShieldOpsError, asyncssh.Error, OSError, asyncio.TimeoutError, LookupError) as exc:
        return NodeState.RUNNING, f"ssh: {getattr(exc, 'reason', None) or exc}", {}
    async with conn:
        found = parse_probe((await run(conn, deploy.PROBE_SCRIPT, check=False, timeout=30)).stdout)
    daemons = {r: s for r, s in found["daemons"].items()}
    detail = ", ".join(f"{r} {s}" for r, s in daemons.items())
    if "running" in daemons.values():
        return NodeState.STARTED, detail, found
    if found["deployed"]:
        return NodeState.DEPLOYED, detail, found
    return NodeState.SSH_READY, "", found


def _current(instances: list[Node]) -> Node:
    """The instance that is ``node`` now: the newest live one not under a spot notice, else the newest live one,
    else the newest."""
    live = [n for n in instances if n.ec2_state not in cost.GONE_STATES]
    pool = [n for n in live if n.spot_notice is None] or live or instances
    return max(pool, key=lambda n: (n.launch_time is not None, n.launch_time or dt.datetime.min, n.instance_id))


def _history(ledger: cost.Ledger, name: str, current: str, now: float) -> list[dict[str, Any]]:
    return [{"instance_id": e.instance_id, "instance_type": e.instance_type, "zone": e.zone,
             "ec2_state": e.ec2_state, "launched": round(e.launched),
             "ended": None if e.ended is None else round(e.ended),
             "cost_usd": None if e.cost(now) is None else round(e.cost(now) or 0.0, 9)}
            for e in ledger.history(name) if e.instance_id != current]


@dataclass
class Look:
    """What ``status`` saw of one cluster at ``now``: every instance of its current life, priced in the ledger,
    the current instance of each node name, what their probes said, and the cluster's security groups."""

    now: float
    ledger: cost.Ledger
    found: list[Node]
    groups: list[dict[str, Any]]
    current: dict[str, Node] = field(default_factory=dict)
    probes: dict[str, tuple[NodeState, str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted({n.name for n in self.found} | {e.node for e in self.ledger.entries.values()}, key=sort_key)


async def _look(cfg: ClusterConfig, ssh: SSHContext) -> Look:
    async with ec2.EC2.open(cfg.region) as cloud:
        groups = await cloud.security_groups(cfg)
        found = ec2.of_incarnation(await cloud.find_instances(cfg, include_gone=True),
                                   {str(g["GroupId"]) for g in groups})
        prices = await cloud.spot_prices({n.instance_type for n in found})
    now = time.time()
    ledger = cost.Ledger(ssh.state.root / LEDGER_FILE if ssh.state.root.is_dir() else None)
    ledger.observe(found, prices, now)
    ledger.save()
    look = Look(now, ledger, found, groups)
    by_name: dict[str, list[Node]] = {}
    for node in found:
        by_name.setdefault(node.name, []).append(node)
    look.current = {name: _current(nodes) for name, nodes in by_name.items()}
    live = [n for n in look.current.values() if n.ec2_state not in cost.GONE_STATES]
    look.probes = dict(zip((n.name for n in live), await asyncio.gather(*(probe(ssh, n) for n in live)), strict=False))
    return look


def _state_and_detail(cfg: ClusterConfig, look: Look, name: str, history: list[dict[str, Any]]) -> tuple[str, str]:
    """A node's state as ``status`` names it (``lost``, ``replacing`` while an heir comes up), and its detail."""
    if name not in look.probes:
        return "lost", "no live instance"
    node_state, detail, found = look.probes[name]
    state = node_state.value
    if history:
        if node_state in (NodeState.PENDING, NodeState.RUNNING, NodeState.SSH_READY):
            state = "replacing"
        detail = f"{detail}; replaced {history[-1]['instance_id']} ({history[-1]['ec2_state']})".lstrip("; ")
    notice = found.get("spot")
    if notice is not None:
        detail = f"{detail}; spot interruption notice ({notice['action']} at {notice['time']})".lstrip("; ")
    if name not in cfg.node_names():
        detail = f"{detail}; not in the config (scale-down: `up` terminates it)".lstrip("; ")
    return state, detail


def _row(cfg: ClusterConfig, look: Look, name: str) -> dict[str, Any]:
    node = look.current.get(name)
    live = node if node is not None and name in look.probes else None  # the node's instance, when it answers
    history = _history(look.ledger, name, live.instance_id if live else "", look.now)
    state, detail = _state_and_detail(cfg, look, name, history)
    entry = look.ledger.entries.get(live.instance_id) if live else None
    return {"node": name, "role": node.role if node else "?", "instance_id": live and live.instance_id,
            "instance_type": node.instance_type if node else None, "zone": node.zone if node else None,
            "ec2_state": node.ec2_state if node else "gone", "state": state, "detail": detail,
            "public_ip": live and live.public_ip, "private_ip": live and live.private_ip,
            "uptime_s": round(entry.hours(look.now) * 3600) if entry else None,
            "usd_per_hour": entry.usd_per_hour if entry else None,
            "cost_usd": round(sum(e.cost(look.now) or 0.0 for e in look.ledger.history(name)), 9),
            "spot_notice": look.probes[name][2].get("spot") if live else None, "history": history}


def _checkpoint_url(cfg: ClusterConfig, record: autostop.Record) -> str | None:
    """Where the record's last checkpoint is mirrored (the tag has no room for the URL; the layout gives it)."""
    if record.checkpoint_url or record.last_checkpoint is None or not cfg.mirrored or not record.life:
        return record.checkpoint_url
    from shield_ops.mirror import Mirror

    return Mirror(cfg.mirror_bucket or "", cfg.mirror_prefix, cfg.region, record.life).url(
        record.run or "run", "checkpoints", f"step-{record.last_checkpoint:08d}.npz")


def _autostop(cfg: ClusterConfig, ssh: SSHContext, look: Look, live_state: dict[str, Any] | None
              ) -> dict[str, Any] | None:
    """The supervisor's state while the PS node answers; else the record of why the cluster stopped itself, from
    its security group's tag (kept in the local state too), or from the local state alone."""
    record = autostop.from_groups(look.groups)
    if record is not None:
        ssh.state.save_autostop(record.to_json())
    elif not look.groups or live_state is None:
        record = autostop.Record.parse(ssh.state.load_autostop() or "")
    if live_state is not None and (live_state.get("decision") or record is None):
        return {**live_state, "source": "supervisor"}
    if record is None:
        return None
    record.checkpoint_url = _checkpoint_url(cfg, record)
    return {"decision": record.reason, "why": record.why, "limits": record.limits, "cost_usd": record.cost_usd,
            "record": json.loads(record.to_json()), "line": record.line(), "source": "record"}


async def status(cfg: ClusterConfig, ssh: SSHContext) -> dict[str, Any]:
    """One row per node name the cluster has had, with history; cost so far (terminated instances included), the
    hourly rate of what is live, the projected cost at the end of the run, the PS's progress, and the supervisor's
    state or why the cluster stopped itself."""
    look = await _look(cfg, ssh)
    rows = [_row(cfg, look, name) for name in look.names]
    ps_probe = look.probes["ps"][2] if "ps" in look.probes else {}
    progress = ps_progress(ps_probe.get("metrics", []))
    total, hourly = look.ledger.total(look.now), look.ledger.hourly()
    elapsed = (progress["step_time"] - progress["job_time"]) if "step_time" in progress and "job_time" in progress \
        else None
    projected = cost.projection(total, hourly, progress, elapsed)
    return {"cluster": cfg.name, "region": cfg.region, "nodes": rows, "usd_per_hour": round(hourly, 9),
            "cost_usd": round(total, 9), "projected_cost_usd": None if projected is None else round(projected, 9),
            "run_dir": ps_probe.get("run"), "ps": progress,
            "autostop": _autostop(cfg, ssh, look, ps_probe.get("autostop")),
            "time": round(look.now, 3)}
