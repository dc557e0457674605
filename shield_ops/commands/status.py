"""``shield-ops status``: nodes, states, addresses, uptime, estimated cost and the PS's progress."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shield_ops.commands.common import add_config_args, arun, load, ssh_context


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="show the cluster's nodes and training progress")
    add_config_args(p)
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format")


def render_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"shield cluster {report['cluster']} ({report['region']})")
    for column in ("node", "instance", "type", "zone", "state", "public ip", "uptime", "$/h", "detail"):
        table.add_column(column)
    for row in report["nodes"]:
        uptime = f"{row['uptime_s'] // 60}m" if row["uptime_s"] is not None else "-"
        price = f"{row['usd_per_hour']:.4f}" if row["usd_per_hour"] is not None else "-"
        table.add_row(row["node"], row["instance_id"] or "-", row["instance_type"] or "-", row["zone"] or "-",
                      row["state"], row["public_ip"] or "-", uptime, price, row["detail"])
        for old in row["history"]:
            table.add_row("", f"[dim]{old['instance_id']}[/]", old["instance_type"], old["zone"],
                          f"[dim]{old['ec2_state']}[/]", "-", "-", "-", f"earlier instance, ${old['cost_usd'] or 0:.4f}")
    console = Console(width=None if sys.stdout.isatty() else 200)  # a file or pipe gets whole rows
    console.print(table)
    projected = report.get("projected_cost_usd")
    console.print(f"cost: ${report['cost_usd']:.4f} so far (terminated instances included), "
                  f"${report['usd_per_hour']:.4f}/h now"
                  + (f", ${projected:.4f} projected at the end of the run" if projected is not None else ""))
    auto = report.get("autostop")
    if auto:
        limits = auto.get("limits") or {}
        set_ = ", ".join(f"{k}={v}" for k, v in limits.items() if v) or "none"
        console.print(f"autostop: {auto.get('decision') or 'watching'} ({auto.get('why') or 'limits: ' + set_})")
    ps = report["ps"]
    if ps:
        parts = [f"{k}={v}" for k, v in ps.items() if v is not None]
        console.print("PS progress: " + " ".join(parts))


def run(args: argparse.Namespace) -> int:
    from shield_ops import lifecycle

    cfg, state = load(args)

    async def go() -> dict[str, Any]:
        return await lifecycle.status(cfg, ssh_context(cfg, state, args))
    report = arun(go())  # type: ignore[arg-type]
    if args.format == "json":
        json.dump(report, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        render_table(report)
    return 0
