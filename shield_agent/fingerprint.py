"""The determinism fingerprint an agent reports in its JOB reply (additive fields; a PS that does not know them
ignores them).

Honest replicas are bit-equal only within one determinism class: same software, kernels, thread count and device.
The agent reports what decides that (``environment``) and, when the PS names a probe in JOB, the evidence: the digest
of one canonical gradient (``probe_digest``: the named file of the named step at the job's initial parameters) and its
sketch under the PS's probe seed (``probe_sketch``, ``probe_norm``), from which the PS measures the honest spread
between classes and sets the vote's tolerance. See docs/byzantine.md.

    JOB (PS -> agent)   {..., "probe": {"step": 0, "file": 0, "seed": 32 bytes, "rows": 256, "width": 32}}
    JOB (agent -> PS)   {..., "environment": {...}, "probe_digest": 32 bytes, "probe_sketch": bytes, "probe_norm": x}
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from shield_model.errors import ComputeError
from wire.job import ProbeSpec

#: Environment variables that change which kernels torch picks on a CPU.
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR",
                    "MKL_ENABLE_INSTRUCTIONS", "CUBLAS_WORKSPACE_CONFIG")


def environment(device: Any, threads: int) -> dict[str, Any]:
    """What decides this agent's determinism class (plain values, for the JOB reply and the PS's view)."""
    import torch

    from shield_model.device import device_name

    env: dict[str, Any] = {
        "torch": str(torch.__version__), "numpy": str(np.__version__), "device": str(device),
        "device_name": device_name(device)[:120], "threads": int(threads),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "mkldnn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "mkl": bool(torch.backends.mkl.is_available()),
        "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
    }
    if getattr(device, "type", "cpu") == "cuda":
        env["cuda"] = str(torch.version.cuda)
        env["cudnn"] = str(torch.backends.cudnn.version())
    for name in KERNEL_VARIABLES:
        if name in os.environ:
            env[name.lower()] = os.environ[name][:64]
    return env


def parse_probe(probe: ProbeSpec | None, num_files: int) -> dict[str, Any] | None:
    """The probe a PS's JOB names (typed by :func:`wire.job.parse_job_offer`), as the map :func:`probe_fields` and a
    Byzantine behaviour read; None when absent (an older PS). ComputeError for a file outside the job."""
    if probe is None:
        return None
    if not 0 <= probe.file < num_files:
        raise ComputeError(f"bad JOB probe: file {probe.file} is not in 0..{num_files - 1}")
    return probe.header()


def probe_fields(computer: Any, probe: dict[str, Any] | None, threads: int, adversary: Any = None) -> dict[str, Any]:
    """The JOB reply's fingerprint fields (runs the probe gradient when the PS named one; call off the event loop).
    A Byzantine agent's ``adversary`` (shield_agent.adversary) may change the probe gradient and the fields."""
    from wire import digest_bytes

    own = getattr(computer, "environment", None)  # a synthetic computer describes itself, without torch
    fields: dict[str, Any] = {"environment": own(threads) if own else environment(computer.device, threads)}
    if probe is None:
        return fields
    from byzantine.sketch import SketchParams, l2_norm, sketch

    gradient = computer.file_gradient(computer.initial_parameters(), probe["step"], probe["file"]).gradient
    if adversary is not None:
        adversary.probe_gradient(gradient, probe["step"], probe["file"])
    fields["probe_digest"] = digest_bytes(memoryview(gradient).cast("B"))
    if np.isfinite(gradient).all():
        params = SketchParams(rows=probe["rows"], width=probe["width"])
        fields["probe_sketch"] = sketch(gradient, probe["seed"], params).astype("<f8").tobytes()
        fields["probe_norm"] = l2_norm(gradient)
    if adversary is not None:
        adversary.probe(fields, gradient, probe)
    return fields
