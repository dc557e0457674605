"""``shield-ps evaluate --train-dir RUN``: evaluate a run's saved checkpoints offline (top-1, top-5, loss)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from shield_ps.errors import CheckpointError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate the checkpoints a run saved")
    p.add_argument("--train-dir", required=True, help="the run directory (holds checkpoints/)")
    p.add_argument("--data-dir", help="dataset directory (default: the one the run used)")
    p.add_argument("--latest", action="store_true", help="only the newest checkpoint")
    p.add_argument("--format", choices=("table", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from shield_model.evaluation import Evaluator
    from shield_ps.checkpoint import list_checkpoints, load_checkpoint
    from shield_ps.data import locate_data
    from shield_ps.plugins import check_unchanged

    paths = list_checkpoints(Path(args.train_dir) / "checkpoints")
    if not paths:
        raise CheckpointError(f"no checkpoints under {args.train_dir}/checkpoints")
    if args.latest:
        paths = paths[-1:]
    rows, evaluators = [], {}
    for path in paths:
        checkpoint = load_checkpoint(path)
        config = checkpoint.config
        data_dir = str(locate_data(config["dataset"], args.data_dir or config.get("data_dir")).path)
        key = (config["network"], config["dataset"], data_dir)
        if key not in evaluators:
            check_unchanged(config)  # a plug-in's parameters only fit the code that trained them
            evaluators[key] = Evaluator(config["network"], config["dataset"], data_dir, int(config["seed"]),
                                        threads=int(config.get("threads", 1)))
        result = evaluators[key].evaluate(checkpoint.params)
        rows.append({"checkpoint": path.name, "step": checkpoint.step, "top1": result.top1, "top5": result.top5,
                     "loss": result.loss, "samples": result.samples})
    if args.format == "json":
        print(json.dumps(rows))
        return 0
    table = Table(title=f"checkpoints of {args.train_dir}")
    for column in ("step", "top-1", "top-5", "loss", "samples"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["step"]), f"{row['top1']:.2%}", f"{row['top5']:.2%}", f"{row['loss']:.4f}",
                      str(row["samples"]))
    Console().print(table)
    return 0
