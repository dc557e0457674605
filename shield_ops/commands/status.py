"""``shield-ops status``: nodes, states, addresses, uptime, estimated cost and the PS's progress."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shield_ops import fmt
from shield_ops.commands.common import add_config_args, arun, load, ssh_context


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show the cluster's nodes and training progress")
    add_config_args(p)
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format")


def progress_line(ps: dict[str, Any], now: float) -> str:
    """The PS's progress in words: step of total, loss and lr with significant digits, top-1, the last step's age,
    and how the run ended (with what it trained itself)."""
    parts = []
    if ps.get("step") is not None:
        total = f"/{ps['total_steps']}" if ps.get("total_steps") is not None else ""
        parts.append(f"step {ps['step']}{total}")
    for key in ("loss", "lr"):
        if isinstance(ps.get(key), (int, float)):
            parts.append(f"{key} {fmt.sig(ps[key], 4)}")
    if isinstance(ps.get("top1"), (int, float)):
        parts.append(f"top-1 {fmt.percent(ps['top1'])} at step {ps.get('eval_step', '?')}")
    if isinstance(ps.get("step_time"), (int, float)):
        parts.append(f"last step {fmt.ago(ps['step_time'], now)}")
    if ps.get("finished"):
        trained = ps.get("steps_trained")
        start = f"resumed from step {ps['resumed_from']}" if ps.get("resumed_from") is not None else "from scratch"
        parts.append(f"finished: {ps['finished']}" + (f" ({trained} steps trained in this run, {start})"
                                                      if trained is not None else ""))
    return ", ".join(parts)


def autostop_line(auto: dict[str, Any]) -> str:
    """The supervisor's state (watching, with its limits) or the record of why the cluster stopped itself."""
    if auto.get("line"):
        return f"autostop: {auto['line']}"
    limits = auto.get("limits") or {}
    shown = {"down_when_done": "down when done", "max_hours": "max {} h", "max_cost": "max ${}"}
    set_ = ", ".join(shown[k].format(v) for k, v in limits.items() if v and k in shown) or "none"
    if auto.get("decision"):
        cost = f"; cost {fmt.usd(auto['cost_usd'])}" if isinstance(auto.get("cost_usd"), (int, float)) else ""
        return f"autostop: {auto['decision']} ({auto.get('why') or set_}){cost}"
    return f"autostop: watching (limits: {set_})"


def render_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"shield cluster {report['cluster']} ({report['region']})")
    for column in ("node", "instance", "type", "zone", "state", "public ip", "uptime", "$/h", "cost", "detail"):
        table.add_column(column)
    for row in report["nodes"]:
        price = fmt.usd(row["usd_per_hour"]) if row["usd_per_hour"] is not None else "-"
        table.add_row(row["node"], row["instance_id"] or "-", row["instance_type"] or "-", row["zone"] or "-",
                      row["state"], row["public_ip"] or "-", fmt.duration(row["uptime_s"]), price,
                      fmt.usd(row["cost_usd"]), row["detail"])
        for old in row["history"]:
            ran = fmt.duration(old["ended"] - old["launched"]) if old.get("ended") is not None else "-"
            table.add_row("", f"[dim]{old['instance_id']}[/]", old["instance_type"], old["zone"],
                          f"[dim]{old['ec2_state']}[/]", "-", ran, "-", fmt.usd(old["cost_usd"] or 0.0),
                          f"earlier instance, ended {fmt.when(old.get('ended'))}")
    console = Console(width=None if sys.stdout.isatty() else 200)  # a file or pipe gets whole rows
    console.print(table)
    projected = report.get("projected_cost_usd")
    console.print(f"cost: {fmt.usd(report['cost_usd'])} so far (terminated instances included), "
                  f"{fmt.usd(report['usd_per_hour'])}/h now"
                  + (f", {fmt.usd(projected)} projected at the end of the run" if projected is not None else ""))
    if report.get("autostop"):
        console.print(autostop_line(report["autostop"]))
    if report["ps"]:
        console.print(f"PS ({report.get('run_dir') or 'run'}): {progress_line(report['ps'], report.get('time') or 0)}")


def run(args: argparse.Namespace) -> int:
    from shield_ops import lifecycle

    cfg, state = load(args)

    async def go() -> dict[str, Any]:
        return await lifecycle.status(cfg, ssh_context(cfg, state, args))
    report = arun(go())
    if args.format == "json":
        json.dump(report, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        render_table(report)
    return 0
