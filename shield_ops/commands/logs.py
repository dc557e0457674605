"""``shield-ops logs``: the daemons' logs from every node, each line prefixed with its node."""
from __future__ import annotations

import argparse
import sys

from shield_ops.commands.common import add_config_args, arun, discover, load, on_each, select, ssh_context, stream_lines


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("logs", help="collect (or --follow) the daemon logs of every node")
    add_config_args(p)
    p.add_argument("--node", action="append", default=None, help="only this node (repeatable)")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines per log (default 50)")
    p.add_argument("-f", "--follow", action="store_true", help="keep streaming new lines until Ctrl-C")


def tail_command(lines: int, follow: bool) -> str:
    flags = f"-n {max(0, lines)}" + (" -F" if follow else "")
    return f"cd \"$HOME/shield/logs\" 2>/dev/null && tail {flags} -v -- *.log 2>&1 || echo '(no logs yet)'"


async def collect(args: argparse.Namespace) -> int:
    from shield_ops.remote import connect

    cfg, state = load(args)
    ssh = ssh_context(cfg, state, args)
    nodes = select(await discover(cfg), args.node)
    command = tail_command(args.lines, args.follow)

    async def one(node) -> int:
        async with await connect(ssh, node) as conn:
            async with conn.create_process(command) as proc:
                await stream_lines(node.name, proc.stdout, sys.stdout)
        return 0
    return await on_each(nodes, one)


def run(args: argparse.Namespace) -> int:
    return arun(collect(args))
