"""Control for docs/experiments.md: the schemes' coordinate median with NO Byzantine worker, in one process.

With q = 0 every replica of a file is the same, so the majority vote is the identity and a cluster run reduces to:
per step, the f file gradients of the step's batch (the agents' deterministic slicing), the aggregator over them, and
momentum SGD. This script does exactly that with the project's own pieces (GradientComputer, aggregate,
MomentumSGD, Schedule, Evaluator), for the f of each scheme at the same whole batch b. It separates what the
attack costs from what the aggregator costs when it takes the median of f files of b/f samples.

    PYTHONPATH=. python examples/clean_median_control.py [--data-dir DIR] --files 15 5 25
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from byzantine.aggregators import aggregate
from shield_model.compute import ComputeSpec, GradientComputer
from shield_model.evaluation import Evaluator
from shield_model.zoo.sources import locate
from shield_ps.optimizer import MomentumSGD, Schedule


def train(data_dir: str, files: int, batch: int, steps: int, eval_every: int, lr: float, aggregator: str,
          seed: int) -> list[tuple[int, float]]:
    computer = GradientComputer(ComputeSpec("LeNet", "MNIST", data_dir, seed=seed, batch_size=batch,
                                            num_files=files))
    evaluator = Evaluator("LeNet", "MNIST", data_dir, seed=seed)
    params = computer.initial_parameters()
    optimizer, schedule = MomentumSGD(params, 0.9), Schedule(lr)
    grads = np.empty((files, params.size), dtype=np.float32)
    curve = []
    for step in range(steps):
        for file in range(files):
            computer.file_gradient(params, step, file, out=grads[file])
        optimizer.step(aggregate(aggregator, grads), schedule.lr_at(step))
        if (step + 1) % eval_every == 0:
            curve.append((step + 1, evaluator.evaluate(params).top1))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="MNIST directory (default: as serve's: the cache, else the embedded "
                        "test split)")
    parser.add_argument("--files", type=int, nargs="+", default=[15, 5, 25])
    parser.add_argument("--batch-size", type=int, default=150)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--aggregator", default="coord-median")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_dir = str(locate("MNIST", args.data_dir).path)
    for files in args.files:
        curve = train(data_dir, files, args.batch_size, args.steps, args.eval_every, args.lr, args.aggregator,
                      args.seed)
        print(json.dumps({"files": files, "samples_per_file": args.batch_size // files, "aggregator": args.aggregator,
                          "top1": [[s, round(t, 4)] for s, t in curve]}), flush=True)


if __name__ == "__main__":
    main()
