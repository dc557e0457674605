"""``shield-ps plot RUN [RUN ...] -o curves.png``: accuracy and loss vs step of several runs, and phase times."""
from __future__ import annotations

import argparse

from shield_ps.errors import PlotError


def figure_size(text: str) -> tuple[float, float]:
    """``WxH`` in inches, e.g. ``15x4.5``."""
    try:
        width, height = (float(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in inches (e.g. 15x4.5), got {text!r}") from None
    if not (0 < width <= 100 and 0 < height <= 100):
        raise argparse.ArgumentTypeError(f"figure size must be within 100x100 inches, got {text!r}")
    return width, height


def register(subparsers: argparse._SubParsersAction) -> None:
    from wire.cli import positive_int

    parser = subparsers.add_parser(
        "plot", help="plot accuracy, loss and step-phase times of one or more runs",
        description="Accuracy and loss vs step of several runs on one figure, and the mean time per step by phase "
                    "as stacked bars. Needs matplotlib (pip install 'shield[plot]').")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directory (or its metrics.jsonl)")
    parser.add_argument("-o", "--output", default="curves.png", help="image file; format from the suffix "
                        "(png, svg, pdf; default: %(default)s)")
    parser.add_argument("--label", action="append", metavar="NAME",
                        help="legend name of each run, in order (default: the run directory's name)")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--size", type=figure_size, default=(15.0, 4.5), metavar="WxH",
                        help="figure size in inches (default: 15x4.5)")
    parser.add_argument("--dpi", type=positive_int, default=100, help="pixels per inch (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from shield_ps.plot import load_curves, plot_runs

    labels = args.label or [None] * len(args.runs)
    if len(labels) != len(args.runs):
        raise PlotError(f"got {len(labels)} --label for {len(args.runs)} runs; give one per run or none")
    runs = [load_curves(run, label) for run, label in zip(args.runs, labels, strict=False)]
    path = plot_runs(runs, args.output, size=args.size, dpi=args.dpi, title=args.title)
    width, height = (round(v * args.dpi) for v in args.size)
    print(f"wrote {path} ({width}x{height} px, {len(runs)} run{'s' if len(runs) > 1 else ''})")
    return 0
