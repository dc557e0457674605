"""``shield-ops down``: terminate the cluster's tagged instances, then delete its tagged group and key pair."""
from __future__ import annotations

import argparse

from shield_ops.commands.common import add_config_args, arun, confirm_or_refuse, load
from shield_ops.ui import OutputFormat


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("down", help="tear a cluster down (only what carries its tag)")
    add_config_args(p, ssh=False)
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--format", type=OutputFormat, choices=list(OutputFormat), default=OutputFormat.AUTO,
                   metavar="{" + ",".join(f.value for f in OutputFormat) + "}", help="progress output")


def run(args: argparse.Namespace) -> int:
    from shield_ops import ec2, provision
    from shield_ops.ui import make_reporter

    cfg, state = load(args)
    confirm = confirm_or_refuse(args.yes)

    async def go() -> int:
        async with ec2.EC2.open(cfg.region) as cloud:
            with make_reporter(args.format, title=f"shield cluster {cfg.name}") as reporter:
                return await provision.down(cloud, cfg, state, reporter, confirm)
    return arun(go())
