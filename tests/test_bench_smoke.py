"""Every benchmark under bench/ runs as the docs write it (``PYTHONPATH=$PWD python bench/NAME.py ...``, from the
checkout's root) with its smallest settings, exits 0 and ends with one JSON object holding its headline figure.
No timing is asserted: this only keeps the scripts runnable (a script whose name shadowed a package once died at
its first import)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.runtime_helpers import REPO

#: script -> (its smallest settings, a key its JSON line must hold)
SMALLEST: dict[str, tuple[tuple[str, ...], str]] = {
    "adversary.py": (("--quick", "--steps", "1", "--only", "fake-probe"), "worst_step_time_ratio"),
    "aggregators.py": (("--n", "11", "--dim", "1000", "--s", "1", "--s-high", "2"), "coord_median_speedup"),
    "analysis.py": (("--configs", "mols_K15_r3"), "configs"),
    "compute.py": (("--reps", "2", "--skip-resnet"), "lenet_bf10_overhead"),
    "fleet.py": (("--only", "codecs", "--codec-reps", "1"), "step_vs_bound_1gbit_20ms"),
    "flood.py": (("--scheme", "detox", "--workers", "3", "--replication", "3", "--steps", "200", "--warmup", "0",
                  "--tail", "2", "--rounds", "1", "--sockets", "10"), "flood_step_time_ratio"),
    "scale.py": (("--dims", "1000", "--workers", "15", "--steps", "1", "--warmup", "0", "--reps", "1",
                  "--relay-pairs", "1", "--relay-d", "1000", "--seconds-per-file", "0", "--skip-threads"), "rows"),
    "startup.py": (("--workers", "3", "--scheme", "detox", "--replication", "3", "--steps", "1"), "ready_speedup"),
    "step.py": (("--scheme", "detox", "--workers", "3", "--replication", "3", "--steps", "2", "--warmup", "0",
                 "--rounds", "1"), "ps_side_vs_aggregator"),
    "vote.py": (("--files", "3", "--reps", "1", "--skip-resnet"), "files"),
    "wire_shaped.py": (("--dim", "1000", "--reps", "1", "--warmup", "0"), "auto_vs_best_fixed_1gbit"),
    "wire_speed.py": (("--dim", "1000", "--reps", "1", "--senders", "2", "--no-shaped"), "fanin_vs_single"),
    "zoo.py": (("--steps", "1", "--behaviours", "trickle"), "zoo_step_time_ratio"),
}


def test_every_benchmark_has_its_smallest_settings() -> None:
    assert sorted(p.name for p in (REPO / "bench").glob("*.py")) == sorted(SMALLEST)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMALLEST))
def test_benchmark_runs_as_documented(script: str) -> None:
    args, key = SMALLEST[script]
    result = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO, capture_output=True, text=True,
                            timeout=900, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    figures = json.loads(last)
    assert isinstance(figures, dict) and key in figures, last[:500]
