"""``status``: every node the cluster has had (lost and replaced ones with their history), what each runs, the cost
so far (terminated instances included) and its projection, the PS's progress and the supervisor's state."""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

import asyncssh

from shield_ops import cost, deploy, ec2
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
    """Latest step, loss, evaluation and summary from the PS's metrics events (docs/metrics.md)."""
    progress: dict[str, Any] = {}
    for event in metrics:
        kind = event.get("kind")
        if kind == "job":
            progress.update(total_steps=event.get("total_steps"), start_step=event.get("start_step"),
                            job_time=event.get("time"))
        elif kind == "step":
            progress.update(step=event.get("step"), loss=event.get("loss"), lr=event.get("lr"),
                            step_time=event.get("time"))
        elif kind == "eval":
            progress.update(eval_step=event.get("step"), top1=event.get("top1"))
        elif kind == "summary":
            progress["finished"] = event.get("reason")
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
             "ec2_state": e.ec2_state, "launched": round(e.launched), "ended": None if e.ended is None else round(e.ended),
             "cost_usd": None if e.cost(now) is None else round(e.cost(now) or 0.0, 9)}
            for e in ledger.history(name) if e.instance_id != current]


async def status(cfg: ClusterConfig, ssh: SSHContext) -> dict[str, Any]:
    """One row per node name the cluster has had, with history; cost so far (terminated instances included), the
    hourly rate of what is live, the projected cost at the end of the run, the PS's progress, the supervisor."""
    async with ec2.EC2.open(cfg.region) as cloud:
        found = ec2.of_incarnation(await cloud.find_instances(cfg, include_gone=True), await cloud.incarnations(cfg))
        prices = await cloud.spot_prices({n.instance_type for n in found})
    now = time.time()
    ledger = cost.Ledger(ssh.state.root / LEDGER_FILE if ssh.state.root.is_dir() else None)
    ledger.observe(found, prices, now)
    ledger.save()
    by_name: dict[str, list[Node]] = {}
    for node in found:
        by_name.setdefault(node.name, []).append(node)
    names = sorted(set(by_name) | {e.node for e in ledger.entries.values()}, key=sort_key)
    current = {name: _current(by_name[name]) for name in names if name in by_name}
    live = [n for n in current.values() if n.ec2_state not in cost.GONE_STATES]
    probes = dict(zip((n.name for n in live), await asyncio.gather(*(probe(ssh, n) for n in live))))
    desired = set(cfg.node_names())
    rows, progress, autostop, run_dir = [], {}, None, None
    for name in names:
        node = current.get(name)
        if node is not None and name in probes:
            node_state, detail, found_probe = probes[name]
            state_value = node_state.value
        else:
            state_value, detail, found_probe = "lost", "no live instance", {}
        history = _history(ledger, name, node.instance_id if node and name in probes else "", now)
        if history and name in probes:
            if state_value in (NodeState.PENDING.value, NodeState.RUNNING.value, NodeState.SSH_READY.value):
                state_value = "replacing"
            detail = f"{detail}; replaced {history[-1]['instance_id']} ({history[-1]['ec2_state']})".lstrip("; ")
        notice = found_probe.get("spot") if name in probes else None
        if notice is not None:
            detail = f"{detail}; spot interruption notice ({notice['action']} at {notice['time']})".lstrip("; ")
        if name not in desired:
            detail = f"{detail}; not in the config (scale-down: `up` terminates it)".lstrip("; ")
        if name == "ps" and found_probe:
            progress = ps_progress(found_probe.get("metrics", []))
            autostop, run_dir = found_probe.get("autostop"), found_probe.get("run")
        entry = ledger.entries.get(node.instance_id) if node is not None else None
        rows.append({"node": name, "role": node.role if node else "?",
                     "instance_id": node.instance_id if node and name in probes else None,
                     "instance_type": node.instance_type if node else None, "zone": node.zone if node else None,
                     "ec2_state": node.ec2_state if node else "gone", "state": state_value, "detail": detail,
                     "public_ip": node.public_ip if node and name in probes else None,
                     "private_ip": node.private_ip if node and name in probes else None,
                     "uptime_s": round(entry.hours(now) * 3600) if entry and name in probes else None,
                     "usd_per_hour": entry.usd_per_hour if entry and name in probes else None,
                     "cost_usd": round(sum(e.cost(now) or 0.0 for e in ledger.history(name)), 9),
                     "spot_notice": notice, "history": history})
    total, hourly = ledger.total(now), ledger.hourly()
    elapsed = (progress["step_time"] - progress["job_time"]) if "step_time" in progress and "job_time" in progress \
        else None
    projected = cost.projection(total, hourly, progress, elapsed)
    return {"cluster": cfg.name, "region": cfg.region, "nodes": rows, "usd_per_hour": round(hourly, 9),
            "cost_usd": round(total, 9), "projected_cost_usd": None if projected is None else round(projected, 9),
            "run_dir": run_dir, "ps": progress, "autostop": autostop}
