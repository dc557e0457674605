"""``--device``: validation everywhere; on a GPU (skipped without one) bit-equal gradients across processes."""
from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
import torch

from shield_model.compute import ComputeSpec, GradientComputer
from shield_model.device import parse_device, resolve_device
from shield_model.errors import ComputeError
from tests.runtime_helpers import MNIST_DIR as MNIST_PATH
from wire import digest_bytes

MNIST_DIR = str(MNIST_PATH)
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")


@pytest.mark.parametrize("text, value", [("cpu", "cpu"), ("CUDA", "cuda"), ("cuda:1", "cuda:1"), (" auto ", "auto")])
def test_device_names_are_parsed(text: str, value: str) -> None:
    assert parse_device(text) == value


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cpu:0", ""])
def test_bad_device_names_are_refused_with_the_choices(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="cpu, cuda, cuda:N or auto"):
        parse_device(text)


def test_the_cli_refuses_a_bad_device_with_exit_status_2() -> None:
    done = subprocess.run([sys.executable, "-m", "shield_agent.cli", "join", "127.0.0.1:1", "--token", "x" * 32,
                           "--device", "gpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "cpu, cuda, cuda:N or auto" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_says_so_and_auto_falls_back_to_the_cpu() -> None:
    with pytest.raises(ComputeError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


_CHILD = """
import sys
from shield_model.compute import ComputeSpec, GradientComputer
from wire import digest_bytes
c = GradientComputer(ComputeSpec("LeNet", "MNIST", sys.argv[1], 0, 30, 3, 1, device="cuda"))
g = c.file_gradient(c.initial_parameters(), 801, 2).gradient
print(digest_bytes(memoryview(g).cast("B")).hex())
"""


@GPU
def test_gpu_gradients_are_bit_identical_across_processes_and_close_to_the_cpu() -> None:
    spec = ComputeSpec("LeNet", "MNIST", MNIST_DIR, 0, 30, 3, 1, device="cuda")
    gpu = GradientComputer(spec)
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).is_cuda
    g = gpu.file_gradient(gpu.initial_parameters(), 801, 2).gradient
    assert g.dtype == np.float32 and np.isfinite(g).all()
    digests = {subprocess.run([sys.executable, "-c", _CHILD, MNIST_DIR], capture_output=True, text=True, check=True,
                              timeout=300).stdout.split()[-1] for _ in range(2)}
    digests.add(digest_bytes(memoryview(g).cast("B")).hex())
    assert len(digests) == 1
    cpu = GradientComputer(ComputeSpec("LeNet", "MNIST", MNIST_DIR, 0, 30, 3, 1))
    h = cpu.file_gradient(cpu.initial_parameters(), 801, 2).gradient
    assert np.linalg.norm(g - h) <= 1e-4 * np.linalg.norm(h)


@GPU
def test_gpu_fingerprint_names_the_gpu() -> None:
    from shield_agent.fingerprint import environment

    env = environment(torch.device("cuda:0"), 1)
    assert env["device"] == "cuda:0" and env["device_name"] == torch.cuda.get_device_name(0) and "cuda" in env
