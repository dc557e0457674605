"""Per-file gradient time of the compute core against a bare torch forward/backward of the same samples.

For each configuration, every repetition picks a (step, file), prepares that file's input batch, and times, in
alternating order, (a) ``GradientComputer.file_gradient`` (parameter load, sample gather, normalisation and
augmentation, forward/backward, gradient copy into a preallocated vector) and (b) the bare baseline: set grads to
None, forward, cross-entropy, backward on the already-prepared batch. Figures are medians; the overhead is
median(a) / median(b) - 1. (a') is file_gradient fed the computer's own parameter storage (no load copy).

ResNet18 runs on a synthetic dataset in the real CIFAR-10 binary layout (random pixels; timing is what matters);
LeNet runs on the local MNIST. One torch thread, as a job fixes it. Last line: JSON of all figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from shield_agent.compute import ComputeSpec, GradientComputer

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = os.environ.get("SHIELD_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))


def fake_cifar10(folder: Path, per_file: int = 1000) -> str:
    batches = folder / "cifar-10-batches-bin"
    batches.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rows = rng.integers(0, 256, size=(per_file, 1 + 3 * 32 * 32), dtype=np.uint8)
        rows[:, 0] %= 10
        rows.tofile(batches / name)
    return str(folder)


def bare(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    started = time.perf_counter()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - started


def measure(name: str, spec: ComputeSpec, reps: int, warmup: int) -> dict[str, float]:
    computer = GradientComputer(spec)
    params = computer.initial_parameters()
    out = np.empty(computer.num_params, dtype=np.float32)
    ours, ours_view, baseline = [], [], []
    for rep in range(warmup + reps):
        step, file = rep, rep % spec.num_files
        x, y = computer.file_inputs(step, file)
        trials = [
            (ours, lambda: computer.file_gradient(params, step, file, out=out).seconds),
            (ours_view, lambda: _in_place(computer, params, step, file, out)),
            (baseline, lambda: bare(computer.model, x, y)),
        ]
        for bucket, trial in (trials if rep % 2 else trials[::-1]):
            seconds = trial()
            if rep >= warmup:
                bucket.append(seconds)
    a, a_view, b = (statistics.median(v) * 1e3 for v in (ours, ours_view, baseline))
    row = {f"{name}_ms": a, f"{name}_inplace_ms": a_view, f"{name}_bare_ms": b,
           f"{name}_overhead": a / b - 1, f"{name}_inplace_overhead": a_view / b - 1}
    print(f"{name:>16}: file_gradient {a:8.2f} ms | with own param storage {a_view:8.2f} ms | bare torch "
          f"{b:8.2f} ms | overhead {100 * (a / b - 1):+5.1f}% ({100 * (a_view / b - 1):+5.1f}% in place) "
          f"| {reps} reps, {computer.num_params:,} params")
    return row


def _in_place(computer: GradientComputer, params: np.ndarray, step: int, file: int, out: np.ndarray) -> float:
    view = computer.parameters_view()
    view[:] = params  # what decoding the PS's vector straight into the model's storage would leave there
    return computer.file_gradient(view, step, file, out=out).seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200, help="LeNet repetitions (ResNet18: reps / 20, at least 5)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cifar = fake_cifar10(Path(tmp))
        runs = [
            ("lenet_bf10", ComputeSpec("LeNet", "MNIST", MNIST_DIR, 1, 100, 10, args.threads), args.reps, 10),
            ("lenet_bf30", ComputeSpec("LeNet", "MNIST", MNIST_DIR, 1, 300, 10, args.threads), args.reps, 10),
            ("resnet18_bf30", ComputeSpec("ResNet18", "Cifar10", cifar, 1, 300, 10, args.threads),
             max(5, args.reps // 20), 2),
        ]
        for name, spec, reps, warmup in runs:
            figures.update(measure(name, spec, reps, warmup))
    figures["threads"] = args.threads
    figures["load_avg_1min"] = os.getloadavg()[0]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
