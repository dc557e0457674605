"""Where an agent computes: ``--device cpu | cuda | cuda:N | auto``, and what CUDA needs to be deterministic.

On a GPU the model, its flat parameter buffer and each file's batch live on the device; the gradient is copied back
to a host float32 vector for the digest, the sketch and the wire. Deterministic CUDA kernels need
``torch.use_deterministic_algorithms(True)`` (set by ``configure_torch`` for every device), cuDNN's autotuner off, and
for cuBLAS a fixed workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, set before the first CUDA call). Agents on the same
GPU model and software then compute bit-equal gradients and form one determinism class; they never match CPU agents
bit for bit (the sketch vote tolerates that).
"""
from __future__ import annotations

import argparse
import os
import re

from shield_model.errors import ComputeError

CUBLAS_WORKSPACE = ":4096:8"
_PATTERN = re.compile(r"^(cpu|auto|cuda(:\d{1,3})?)$")


def parse_device(text: str) -> str:
    """argparse type: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (lower-cased), else a message saying so."""
    value = text.strip().lower()
    if not _PATTERN.match(value):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or auto, got {text!r}")
    return value


def prepare_cuda_environment() -> None:
    """Set the cuBLAS workspace that deterministic cuBLAS needs; must run before CUDA is initialised."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def resolve_device(spec: str):  # -> torch.device (torch imported lazily: the CLI parses without it)
    """The torch device for ``spec``; ComputeError when CUDA is asked for and absent, or the index is out of range."""
    import torch

    if not _PATTERN.match(spec):
        raise ComputeError(f"unknown device {spec!r} (expected cpu, cuda, cuda:N or auto)")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    prepare_cuda_environment()
    if not torch.cuda.is_available():
        raise ComputeError(f"--device {spec}: no CUDA device is visible to torch (torch.cuda.is_available() is "
                           "False); use --device cpu or auto")
    device = torch.device("cuda:0" if spec in ("auto", "cuda") else spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ComputeError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        raise ComputeError("deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG=:4096:8 or :16:8, got "
                           f"{os.environ.get('CUBLAS_WORKSPACE_CONFIG')!r}")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return device


def device_name(device) -> str:  # device: torch.device
    """A human name: the GPU's model, or the CPU's model from /proc/cpuinfo (platform's guess elsewhere)."""
    import platform

    import torch

    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
