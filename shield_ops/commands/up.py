"""``shield-ops up``: plan, confirm, provision, deploy and start a cluster (idempotent)."""
from __future__ import annotations

import argparse
from pathlib import Path

from shield_ops.commands.common import add_config_args, arun, confirm_or_refuse, load, ssh_context
from shield_ops.ui import OutputFormat


def register(sub: argparse._SubParsersAction) -> None:
    from shield_ops.lifecycle import Stage

    p = sub.add_parser("up", help="create or complete a cluster from a config file")
    add_config_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and the estimated price; change nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--only", type=Stage, choices=list(Stage), default=Stage.START,
                   metavar="{" + ",".join(s.value for s in Stage) + "}", help="stop after this stage")
    p.add_argument("--wheel", type=Path, default=None, help="deploy this wheel instead of building one")
    p.add_argument("--format", type=OutputFormat, choices=list(OutputFormat), default=OutputFormat.AUTO,
                   metavar="{" + ",".join(f.value for f in OutputFormat) + "}", help="progress output")


def run(args: argparse.Namespace) -> int:
    from shield_ops import lifecycle
    from shield_ops.ui import make_reporter

    cfg, state = load(args)
    opts = lifecycle.UpOptions(dry_run=args.dry_run, only=args.only, wheel=args.wheel,
                               confirm=confirm_or_refuse(args.yes, f"create these resources for {cfg.name}?"))
    with make_reporter(args.format, title=f"shield cluster {cfg.name}") as reporter:
        return arun(lifecycle.up(cfg, state, ssh_context(cfg, state, args), opts, reporter))
