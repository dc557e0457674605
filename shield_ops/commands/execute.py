"""``shield-ops exec -- CMD``: run a shell command on every running node (or those named), output prefixed."""
from __future__ import annotations

import argparse
import sys

from shield_ops.commands.common import add_config_args, arun, discover, load, on_each, select, ssh_context, stream_lines


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("exec", help="run a command on all nodes: shield-ops exec -c F -- CMD ...")
    add_config_args(p)
    p.add_argument("--node", action="append", default=None, help="only this node (repeatable)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command (after --)")


async def run_everywhere(args: argparse.Namespace, command: str) -> int:
    from shield_ops.remote import connect

    cfg, state = load(args)
    ssh = ssh_context(cfg, state, args)
    nodes = select(await discover(cfg), args.node)

    async def one(node) -> int:
        async with await connect(ssh, node) as conn:
            async with conn.create_process(command, stderr=asyncssh_stdout()) as proc:
                await stream_lines(node.name, proc.stdout, sys.stdout)
                await proc.wait()
                status = proc.exit_status if proc.exit_status is not None else 255
        if status:
            print(f"[{node.name}] exit status {status}", file=sys.stderr)
        return int(status)
    return await on_each(nodes, one)


def asyncssh_stdout():
    import asyncssh

    return asyncssh.STDOUT


def run(args: argparse.Namespace) -> int:
    from shield_ops.errors import ShieldOpsError

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise ShieldOpsError("no command given; write shield-ops exec -c cluster.toml -- uptime")
    return arun(run_everywhere(args, " ".join(cmd)))
