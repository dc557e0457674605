"""``shield-ps analyze``: how many files can q Byzantine workers win under a placement (exact c_max per q)."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from wire.cli import enum_choice, positive_float, positive_int

if TYPE_CHECKING:
    from byzantine.analysis import Analysis

#: Default per-q search budget in seconds: generous; every benchmark configuration needs a small fraction of it.
DEFAULT_TIME_LIMIT = 300.0


def byzantine_counts(text: str) -> list[int]:
    """Parse ``--byzantine``: a number ``5``, a range ``2-7``, or a list ``2,4,6`` (items may be ranges)."""
    counts: list[int] = []
    for item in text.split(","):
        low, sep, high = item.strip().partition("-")
        try:
            a = int(low)
            b = int(high) if sep else a
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number, a range a-b or a list like 2,4,6; got {text!r}") from None
        if a < 0 or b < a:
            raise argparse.ArgumentTypeError(f"expected counts >= 0 and ranges a-b with a <= b; got {item.strip()!r}")
        counts.extend(range(a, b + 1))
    return sorted(set(counts))


def register(subparsers: argparse._SubParsersAction) -> None:
    from byzantine.placement import SCHEME_ALIASES, Scheme

    parser = subparsers.add_parser(
        "analyze", help="exact worst case (c_max) of a placement for q Byzantine workers",
        description="For each q: the most files q Byzantine workers can win (exact, by branch and bound), the "
                    "lexicographically smallest such set, and the paper's fractions and Claim 1 bound.")
    parser.add_argument("--scheme", required=True, type=enum_choice(Scheme, SCHEME_ALIASES),
                        help="placement: " + ", ".join(s.value for s in Scheme))
    parser.add_argument("--workers", "-K", required=True, type=positive_int, help="number of workers K")
    parser.add_argument("--replication", "-r", required=True, type=positive_int,
                        help="replication r (rama_one: m; rama_two: s)")
    parser.add_argument("--rama-m", type=positive_int, default=None, help="m of Ramanujan case 2 (a multiple of s)")
    parser.add_argument("--byzantine", "-q", type=byzantine_counts, default=None,
                        help="q values: a number, a range a-b or a list (default 1 .. (K-1)//2)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.add_argument("--time-limit", type=positive_float, default=DEFAULT_TIME_LIMIT,
                        help=f"seconds of search per q (default {DEFAULT_TIME_LIMIT:g}); when it runs out the answer "
                             "is the best set found with a proven upper bound, marked not exact")


def run(args: argparse.Namespace) -> int:
    from byzantine.analysis import analyze, default_byzantine_range
    from byzantine.placement import build_placement
    from shield_ps.errors import ConfigError

    placement = build_placement(args.scheme, args.workers, args.replication, args.rama_m)
    qs = args.byzantine if args.byzantine is not None else default_byzantine_range(placement)
    bad = [q for q in qs if q > placement.K]
    if bad:
        raise ConfigError(f"--byzantine must be at most K={placement.K}; got {bad[0]}")
    result = analyze(placement, qs, args.time_limit)
    if args.format == "json":
        print(json.dumps(result.to_json()))
    else:
        _print_table(result)
    return 0


def _print_table(result: Analysis) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"{result.scheme}: K={result.K} f={result.f} l={result.l} r={result.r}  "
             f"mu1={result.mu1:.4f} sigma2={result.sigma2:.4f} "
             f"{'Ramanujan' if result.ramanujan else 'not Ramanujan'}")
    table = Table(title=title)
    for name in ("q", "c_max", "epsilon", "baseline q/K", "DETOX/FRC", "gamma", "worst set (from 0)", "s"):
        table.add_column(name, justify="left" if name.startswith("worst") else "right")
    for row in result.rows:
        c_max = str(row.c_max) if row.exact else f"{row.c_max}..{row.upper_bound} (time limit)"
        gamma = "-" if row.gamma is None else f"{row.gamma:.2f}"
        table.add_row(str(row.q), c_max, f"{row.epsilon:.3f}", f"{row.epsilon_baseline:.3f}",
                      f"{row.epsilon_frc:.3f}", gamma, " ".join(map(str, row.worst_set)), f"{row.seconds:.2f}")
    Console().print(table)
