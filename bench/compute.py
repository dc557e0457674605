"""Per-file gradient time of the compute core against a bare torch forward/backward of the same samples.

For each configuration, every repetition picks a (step, file), prepares that file's input batch, and times, in
rotating order:
  (a)  ``GradientComputer.file_gradient``: parameter load, sample gather, normalisation and augmentation,
       forward/backward, gradient copy into a preallocated flat vector;
  (a') the same, fed the computer's own parameter storage (``parameters_view()``: no load copy);
  (b)  bare: set grads to None, forward, cross-entropy, backward on the already-prepared batch;
  (c)  torch idiom for the same job: ``vector_to_parameters`` + (b) + ``torch.cat`` of the grads into the vector.
(d)  the wrapper's own pieces timed alone (parameter load, input preparation, gradient copy): their sum over
       (b) is a low-noise estimate of the overhead when the machine is busy.
Times are CPU seconds of the calling thread (``time.thread_time``; one torch thread runs in the caller), which
keeps other processes on a shared machine out of the figures; medians. Overhead = median(a) / median(b) - 1.

ResNet18 runs on a synthetic dataset in the real CIFAR-10 binary layout (random pixels; timing is what matters);
LeNet runs on the local MNIST. One torch thread, as a job fixes it. When torch sees a GPU, the same files are also
timed with ``--device cuda`` (wall time per file, synchronised by the gradient's copy back to the host; keys
``*_gpu_ms``). Last line: JSON of all figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from shield_model.compute import ComputeSpec, GradientComputer
from shield_model.zoo.models import build_seeded_model

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = os.environ.get("SHIELD_MNIST_DIR") or str(REPO / "shield_model" / "zoo" / "embedded" / "mnist")


def fake_cifar10(folder: Path, per_file: int = 1000) -> str:
    batches = folder / "cifar-10-batches-bin"
    batches.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rows = rng.integers(0, 256, size=(per_file, 1 + 3 * 32 * 32), dtype=np.uint8)
        rows[:, 0] %= 10
        rows.tofile(batches / name)
    return str(folder)


def bare(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def torch_idiom(model: torch.nn.Module, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                out: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(params, model.parameters())
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    torch.cat([p.grad.reshape(-1) for p in model.parameters()], out=out)


def cpu_seconds(fn: Callable[[], object]) -> float:
    started = time.thread_time()
    fn()
    return time.thread_time() - started


def measure(name: str, spec: ComputeSpec, reps: int, warmup: int) -> dict[str, float]:
    computer = GradientComputer(spec)
    params = computer.initial_parameters()
    out = np.empty(computer.num_params, dtype=np.float32)
    idiom_model = build_seeded_model(spec.network, spec.dataset, spec.seed).train()
    idiom_params, idiom_out = torch.from_numpy(params.copy()), torch.empty(computer.num_params)
    view = computer.parameters_view()
    times: dict[str, list[float]] = {key: [] for key in ("ours", "inplace", "bare", "idiom", "load", "inputs",
                                                            "grad_copy")}
    for rep in range(warmup + reps):
        step, file = rep, rep % spec.num_files
        x, y = computer.file_inputs(step, file)
        view[:] = params  # as if the PS's vector had been decoded straight into the model's storage
        trials = [
            ("ours", lambda: computer.file_gradient(params, step, file, out=out)),  # noqa: B023 (timed within this iteration)
            ("inplace", lambda: computer.file_gradient(view, step, file, out=out)),  # noqa: B023 (timed within this iteration)
            ("bare", lambda: bare(computer.model, x, y)),  # noqa: B023 (timed within this iteration)
            ("idiom", lambda: torch_idiom(idiom_model, idiom_params, x, y, idiom_out)),  # noqa: B023 (timed within this iteration)
        ]
        trials += [  # the wrapper's own work, piece by piece: a low-noise estimate of its overhead
            ("load", lambda: computer.flat.load(params)),
            ("inputs", lambda: computer.file_inputs(step, file)),  # noqa: B023 (timed within this iteration)
            ("grad_copy", lambda: computer.flat.gradient(out)),
        ]
        shift = rep % len(trials)
        for key, trial in trials[shift:] + trials[:shift]:
            seconds = cpu_seconds(trial)
            if rep >= warmup:
                times[key].append(seconds)
    ms = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    row = {f"{name}_ms": ms["ours"], f"{name}_inplace_ms": ms["inplace"], f"{name}_bare_ms": ms["bare"],
           f"{name}_torch_idiom_ms": ms["idiom"], f"{name}_overhead": ms["ours"] / ms["bare"] - 1,
           f"{name}_inplace_overhead": ms["inplace"] / ms["bare"] - 1,
           f"{name}_vs_torch_idiom": ms["ours"] / ms["idiom"] - 1,
           f"{name}_load_ms": ms["load"], f"{name}_inputs_ms": ms["inputs"], f"{name}_grad_copy_ms": ms["grad_copy"],
           f"{name}_parts_overhead": (ms["load"] + ms["inputs"] + ms["grad_copy"]) / ms["bare"]}
    print(f"{name:>14}: file_gradient {ms['ours']:8.2f} ms ({ms['inplace']:8.2f} in place) | bare fwd/bwd "
          f"{ms['bare']:8.2f} ms | torch idiom {ms['idiom']:8.2f} ms | overhead vs bare "
          f"{100 * row[f'{name}_overhead']:+5.1f}% ({100 * row[f'{name}_inplace_overhead']:+5.1f}% in place), "
          f"vs idiom {100 * row[f'{name}_vs_torch_idiom']:+5.1f}% | {reps} reps, {computer.num_params:,} params")
    print(f"{'':>14}  wrapper parts: param load {ms['load']:.3f} ms + inputs {ms['inputs']:.3f} ms + gradient copy "
          f"{ms['grad_copy']:.3f} ms = {100 * row[f'{name}_parts_overhead']:.1f}% of bare")
    return row


def measure_gpu(name: str, spec: ComputeSpec, reps: int, warmup: int) -> dict[str, float]:
    """Per-file gradient wall time on the GPU (synchronised: the gradient is copied back to the host each time),
    median of ``reps``; also checks that two computations of the same file are bit-equal there."""
    computer = GradientComputer(spec)
    params = computer.initial_parameters()
    out = np.empty(computer.num_params, dtype=np.float32)
    seconds = []
    for rep in range(warmup + reps):
        started = time.perf_counter()
        computer.file_gradient(params, rep, rep % spec.num_files, out=out)
        if rep >= warmup:
            seconds.append(time.perf_counter() - started)
    first = computer.file_gradient(params, 0, 0).gradient
    again = computer.file_gradient(params, 0, 0).gradient
    ms = statistics.median(seconds) * 1e3
    print(f"{name:>14}: file_gradient on {torch.cuda.get_device_name(computer.device)} {ms:8.2f} ms (wall, "
          f"synchronised) | repeat bit-equal: {bool(np.array_equal(first, again))} | {reps} reps")
    return {f"{name}_gpu_ms": ms, f"{name}_gpu_repeat_equal": float(np.array_equal(first, again))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200, help="LeNet repetitions (ResNet18: reps / 20, at least 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-resnet", action="store_true", help="LeNet only")
    args = parser.parse_args()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cifar = fake_cifar10(Path(tmp))
        runs = [
            ("lenet_bf10", ComputeSpec("LeNet", "MNIST", MNIST_DIR, 1, 100, 10, args.threads), args.reps, 10),
            ("lenet_bf30", ComputeSpec("LeNet", "MNIST", MNIST_DIR, 1, 300, 10, args.threads), args.reps, 10),
            ("resnet18_bf30", ComputeSpec("ResNet18", "Cifar10", cifar, 1, 300, 10, args.threads),
             max(5, args.reps // 20), 2),
        ][:2 if args.skip_resnet else 3]
        for name, spec, reps, warmup in runs:
            figures.update(measure(name, spec, reps, warmup))
        if torch.cuda.is_available():  # the GPU figures (skipped without a GPU)
            for name, spec, reps, warmup in runs:
                gpu = ComputeSpec(spec.network, spec.dataset, spec.data_dir, spec.seed, spec.batch_size,
                                  spec.num_files, spec.threads, device="cuda")
                figures.update(measure_gpu(name, gpu, reps, warmup))
        else:
            print("no GPU visible to torch: GPU figures skipped")
    figures["threads"] = args.threads
    figures["load_avg_1min"] = os.getloadavg()[0]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
