"""``shield-ps sweep``: run a grid of trainings (schemes x aggregators x attacks x q x seeds, plus the q = 0
controls) as local clusters or in-process, and tabulate and plot the results with intervals over seeds;
``--preset fig9`` / ``fig2`` are the paper's comparisons at its settings on LeNet/MNIST, ``reach`` the q x attack grid.

Settings come from the preset, then the ``--config`` TOML file, then the flags (each overriding the one before).
Completed runs are skipped, so an interrupted sweep continues where it stopped when run again with the same
``--out``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shield_ps.errors import SweepError
from wire.cli import non_negative_int, positive_float, positive_int

if TYPE_CHECKING:
    from shield_ps.sweep.grid import Grid
    from shield_ps.sweep.runner import SweepRunner


def _axis(key: str, item: Callable[[str], Any] = str) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for a comma-separated axis, validated by the grid's own rules."""
    from shield_ps.sweep.grid import parse_axis

    def parse(text: str) -> tuple[Any, ...]:
        try:
            return parse_axis(key, [item(part.strip()) for part in text.split(",") if part.strip()])
        except (SweepError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = f"comma-separated {key}"
    return parse


def _choice(key: str) -> Callable[[str], str]:
    from shield_ps.sweep.grid import zoo_name

    def parse(text: str) -> str:
        try:
            return zoo_name(key, text)
        except SweepError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = key
    return parse


def _momentum(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"momentum must be in [0, 1), got {value}")
    return value


#: flag destination -> Grid field, for the scalar settings a flag may override.
_SCALARS = ("workers", "replication", "rama_m", "network", "dataset", "batch_size", "lr", "momentum", "gamma",
            "lr_step", "max_steps", "eval_freq", "alie_z", "byzantine_gen", "controls")
_AXES = ("schemes", "aggregators", "attacks", "byzantine", "seeds")


def register(sub: argparse._SubParsersAction) -> None:
    from byzantine.byzantine_sets import ByzantineChoice
    from shield_model.device import parse_device
    from shield_ps.flags import agg_threads, alie_z
    from shield_ps.sweep.grid import Preset
    from shield_ps.sweep.runner import Engine
    from wire.cli import enum_choice

    p = sub.add_parser("sweep", help="run a grid of local trainings and tabulate/plot the results",
                       description=__doc__.split("\n\n")[0].replace("``", "'"))
    p.add_argument("--preset", type=enum_choice(Preset), help="the paper's comparison at its settings: fig9 (K=15, "
                   "q=2, ALIE, median/bulyan/multi-krum, b=750) or fig2 (K=25, q=3 and 5, ALIE, median, b=1250); "
                   "reach (K=15, q=2,4,6 x ALIE z auto/3, constant, rev-grad); fig9-scaled and fig2-scaled (b=150 and "
                   "250, z=1, one seed)")
    p.add_argument("--config", metavar="TOML", help="grid file (keys as the flags, with underscores; lists for the "
                   "axes)")
    p.add_argument("--out", help="sweep directory (default sweeps/<preset or 'grid'>); rerun to resume")
    p.add_argument("--data-dir", metavar="DIR", help="directory that holds the dataset, passed to every run "
                   "(default: as serve's: the cache, else MNIST's embedded test split)")
    p.add_argument("--run-timeout", type=positive_float, default=3600.0, help="seconds per run before it is "
                   "stopped and marked failed (default 3600)")
    p.add_argument("--join-timeout", type=positive_float, default=900.0, help="seconds each run waits for its K "
                   "local agents to start (default 900: K torch processes start slowly on a busy machine)")
    p.add_argument("--gather-timeout", type=positive_float, default=600.0, help="seconds each step waits for "
                   "digests (default 600)")
    p.add_argument("--engine", type=enum_choice(Engine), default=Engine.CLUSTER,
                   help="cluster (default): each run a real local cluster (serve --local-agents K); inprocess: the "
                   "same mathematics in one process, each file computed once (bit-identical parameters; no "
                   "measured bytes or wire times), for large grids")
    p.add_argument("--device", type=parse_device, default="cpu",
                   help="where gradients are computed: cpu (default), cuda, cuda:N (the local agents' --device, or "
                   "the in-process engine's)")
    p.add_argument("--agg-threads", type=agg_threads, metavar="N", help="threads of each run's aggregation "
                   "(1..64; default: serve's, one per core, and 1 in-process; never changes the result)")
    p.add_argument("--dry-run", action="store_true", help="print the grid, what is infeasible and the commands")
    p.add_argument("--no-plots", action="store_true", help="write the CSV and table only")
    p.add_argument("--plain", action="store_true", help="plain progress lines instead of the live view")
    g = p.add_argument_group("grid axes (comma-separated)")
    g.add_argument("--schemes", type=_axis("schemes"), help="baseline, detox, mols, rama_one, rama_two")
    g.add_argument("--aggregators", type=_axis("aggregators"), help="e.g. coord-median,bulyan,multi-krum")
    g.add_argument("--attacks", type=_axis("attacks"), help="none, rev-grad, constant, foe, alie, or alie:Z (ALIE "
                   "with its own z: a number or auto)")
    g.add_argument("--byzantine", type=_axis("byzantine", non_negative_int), metavar="Q[,Q...]")
    g.add_argument("--seeds", type=_axis("seeds", non_negative_int), metavar="S[,S...]")
    g = p.add_argument_group("settings shared by every run")
    g.add_argument("--workers", type=positive_int, metavar="K")
    g.add_argument("--replication", type=positive_int, metavar="R", help="r of every scheme but the baseline")
    g.add_argument("--rama-m", type=positive_int)
    g.add_argument("--network", type=_choice("network"))
    g.add_argument("--dataset", type=_choice("dataset"))
    g.add_argument("--batch-size", type=positive_int, help="the whole batch b, the same for every scheme")
    g.add_argument("--lr", type=positive_float)
    g.add_argument("--momentum", type=_momentum)
    g.add_argument("--gamma", type=positive_float)
    g.add_argument("--lr-step", type=positive_int)
    g.add_argument("--max-steps", type=positive_int)
    g.add_argument("--eval-freq", type=positive_int)
    g.add_argument("--alie-z", type=alie_z, help="ALIE's z for 'alie' (a number, or auto: ALIE's z_max for the "
                   "aggregator's f rows and the corrupted ones)")
    g.add_argument("--no-controls", dest="controls", action="store_false", default=None,
                   help="do not add the q=0 control run of each scheme, aggregator and seed")
    g.add_argument("--byzantine-gen", type=lambda text: enum_choice(ByzantineChoice)(text).value)


def build_grid(args: argparse.Namespace) -> tuple[Grid, str]:
    """The grid from preset, TOML and flags, and a short name for the default output directory."""
    from shield_ps.sweep.grid import Grid, load_toml, preset

    grid, name = Grid(), "grid"
    if args.preset is not None:
        grid, name = preset(args.preset).grid, args.preset.value
    if args.config:
        grid = load_toml(args.config, grid)
    changes = {key: getattr(args, key) for key in _AXES + _SCALARS if getattr(args, key) is not None}
    return grid.replace(**changes), name


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from shield_ps.data import locate_data
    from shield_ps.plugins import resolve_plugins
    from shield_ps.sweep.grid import PRESETS
    from shield_ps.sweep.report import write_report
    from shield_ps.sweep.runner import SweepRunner, check_output_dir
    from shield_ps.sweep.view import progress_view

    grid, name = build_grid(args)
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: do not wrap the results table at 80 columns
        console = Console(width=220)
    if args.preset is not None:
        entry = PRESETS[args.preset]
        console.print(f"preset {args.preset.value}: {entry.reproduces}")
        console.print(f"differs from the paper: {entry.scaled}")
        console.print(f"this sweep: {grid.network} on {grid.dataset}, b = {grid.batch_size}, {grid.max_steps} steps, "
                      f"seeds {', '.join(map(str, grid.seeds))}, {args.engine.value} engine on {args.device}")
    # every run reads the same directory, checked before the first run starts (a typo or missing data stops the
    # sweep here instead of failing every point); the first use downloads it into the cache
    data = locate_data(grid.dataset, args.data_dir, download=not args.dry_run)
    console.print(f"data {data.describe()}", soft_wrap=True)
    specs = grid.runs()
    if specs:  # a plug-in network or dataset is imported and checked once, before the first run
        resolve_plugins(specs[0].config(data_dir=str(data.path)), str(data.path))
    runner = SweepRunner(grid, Path(args.out or f"sweeps/{name}"), data_dir=data.hand_on,
                         run_timeout_s=args.run_timeout, join_timeout_s=args.join_timeout,
                         gather_timeout_s=args.gather_timeout, engine=args.engine, device=args.device,
                         agg_threads=args.agg_threads)
    if args.dry_run:
        return _dry_run(runner, console)
    check_output_dir(runner.out)
    with progress_view(console, plain=args.plain or not console.is_terminal) as view:
        runner.on_progress = view
        try:
            rows = runner.run()
        except KeyboardInterrupt:
            print("shield-ps sweep: interrupted; completed runs are kept, rerun to continue", file=sys.stderr)
            rows = runner.rows()
            write_report(rows, runner, console, plots=False)
            return 130
    write_report(rows, runner, console, plots=not args.no_plots)
    return 0 if all(not r.status.startswith("failed") for r in rows) else 1


def _dry_run(runner: SweepRunner, console: Any) -> int:
    import shlex

    for spec in runner.grid.runs():
        reason = spec.infeasible()
        if reason:
            console.print(f"[yellow]infeasible[/] {spec.name}: {reason}")
        else:
            console.print(shlex.join(runner.serve_command(spec, resume=False)), soft_wrap=True)
    return 0
