"""``shield-ops up``: plan, confirm, provision, deploy and start a cluster (idempotent)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from shield_ops.commands.common import add_config_args, arun, confirm_or_refuse, load, ssh_context
from shield_ops.config import ClusterConfig
from shield_ops.ui import OutputFormat, Reporter


def register(sub: argparse._SubParsersAction) -> None:
    from shield_ops.lifecycle import Stage

    p = sub.add_parser("up", help="create or complete a cluster from a config file")
    add_config_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan and the estimated price; change nothing")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.add_argument("--only", type=Stage, choices=list(Stage), default=Stage.START,
                   metavar="{" + ",".join(s.value for s in Stage) + "}", help="stop after this stage")
    p.add_argument("--wheel", type=Path, default=None, help="deploy this wheel instead of building one")
    g = p.add_argument_group("never a runaway bill (enforced on the cluster by a supervisor on the PS node)")
    g.add_argument("--down-when-done", action="store_true",
                   help="terminate the cluster when the run ends (completed or failed); = autostop.down_when_done")
    g.add_argument("--max-hours", type=bounded_float("--max-hours", 8760.0), metavar="H",
                   help="terminate the cluster after H hours (0 < H <= 8760); = autostop.max_hours")
    g.add_argument("--max-cost", type=bounded_float("--max-cost", 1e6), metavar="USD",
                   help="terminate the cluster before its cost reaches USD (spot prices; terminated instances "
                   "count); = autostop.max_cost")
    p.add_argument("--resume-from", type=s3_run_url, default=None, metavar="S3_URL",
                   help="continue a run of an earlier life of the cluster from its mirrored checkpoint: "
                   "s3://BUCKET/PREFIX/LIFE/RUN (shown by status and down); the PS checks the configuration hash. "
                   "Only for a PS node without a run (a new cluster)")
    p.add_argument("--watch", action="store_true",
                   help="then keep the cluster whole until its run ends: replace lost nodes, restart dead daemons")
    p.add_argument("--watch-interval", type=bounded_float("--watch-interval", 3600.0), default=30.0, metavar="S",
                   help="seconds between two looks of --watch (default 30)")
    p.add_argument("--format", type=OutputFormat, choices=list(OutputFormat), default=OutputFormat.AUTO,
                   metavar="{" + ",".join(f.value for f in OutputFormat) + "}", help="progress output")


def bounded_float(flag: str, high: float) -> Callable[[str], float]:
    """An argparse type: a number in (0, high], with an error that says what is allowed."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 < value <= high:  # also false for NaN
            raise argparse.ArgumentTypeError(f"{flag} must be a number in (0, {high:g}], got {text!r}")
        return value
    return parse


def s3_run_url(text: str) -> str:
    """An argparse type: an ``s3://BUCKET/KEY`` URL of a mirrored run, with an error that says the form."""
    from shield_ops.mirror import parse_url

    try:
        parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--resume-from: {exc}") from None
    return text.rstrip("/")


def autostop_overrides(args: argparse.Namespace) -> list[str]:
    """The autostop flags as ``--set`` overrides (they win over the config file)."""
    out = ["autostop.down_when_done=true"] if args.down_when_done else []
    out += [f"autostop.max_hours={args.max_hours!r}"] if args.max_hours is not None else []
    out += [f"autostop.max_cost={args.max_cost!r}"] if args.max_cost is not None else []
    return out


def run(args: argparse.Namespace) -> int:
    from shield_ops import lifecycle
    from shield_ops.ui import make_reporter

    args.overrides = list(args.overrides) + autostop_overrides(args)
    cfg, state = load(args)
    opts = lifecycle.UpOptions(dry_run=args.dry_run, only=args.only, wheel=args.wheel,
                               confirm=confirm_or_refuse(args.yes), resume_from=args.resume_from)
    async def go(reporter: Reporter) -> int:
        ssh = ssh_context(cfg, state, args)
        code = await lifecycle.up(cfg, state, ssh, opts, reporter)
        if args.watch and not args.dry_run and args.only is lifecycle.Stage.START:
            from shield_ops.watch import watch

            code = await watch(cfg, state, ssh, opts, reporter, args.watch_interval)
        return code

    with make_reporter(args.format, title=f"shield cluster {cfg.name}") as reporter:
        try:
            return arun(go(reporter))
        except KeyboardInterrupt:
            reporter.close()
            print(interrupted(cfg, args), file=sys.stderr, flush=True)
            return 130


def interrupted(cfg: ClusterConfig, args: argparse.Namespace) -> str:
    """What Ctrl-C leaves behind: what runs, what it costs, and how to resume or stop it."""
    import asyncio

    from shield_ops import ec2, fmt

    async def look() -> str:
        async with ec2.EC2.open(cfg.region) as cloud:
            live = await cloud.find_instances(cfg)
            prices = await cloud.spot_prices({n.instance_type for n in live})
        hourly = sum(ec2.hourly_price(prices, n.instance_type, n.zone) or 0.0 for n in live)
        names = ", ".join(sorted(n.name for n in live)) or "none"
        return f"{len(live)} instance(s) of cluster {cfg.name} are running ({names}) at about {fmt.usd(hourly)}/h"
    try:
        running = asyncio.run(asyncio.wait_for(look(), 20))
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the advice below matters more
        running = f"the cluster's instances could not be listed ({type(exc).__name__}); some may be running"
    where = f"-c {args.config}" + (f" --state-dir {args.state_dir}" if args.state_dir else "")
    return (f"interrupted: {running}. They keep running (and costing) until stopped: `shield-ops up {where}` "
            f"resumes (it adopts what was launched), `shield-ops status {where}` shows them and their cost, "
            f"`shield-ops down {where}` terminates them.")
