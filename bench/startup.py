"""Start-up time and memory of local agents: many worker slots per process against one process per worker.

Each configuration is a real ``shield-ps serve --local-agents K`` run (LeNet on the local MNIST, a few steps) started
from a cold Python; a sampler reads the resident memory (VmRSS) of the PS and of every agent process from /proc
every 0.2 s. Figures per configuration:
  ready_s        from launching ``serve`` to the ``join`` event with all K agents ready;
  first_step_s   from launching ``serve`` to the first ``step`` event;
  agents_rss_mb  the peak of the summed RSS of the agent processes;
  peak_rss_mb    the peak of the summed RSS of the PS and the agents (what the machine must hold).

Configurations, all in the same run (the baseline is today's layout, one process per worker):
  baseline   K workers in K processes (``--agent-processes K``);
  default    K workers in the default number of processes (one per core but one, at least one);
  single     K workers in one process (for the memory slope; the default run itself when its default is one).
Ratios: ``ready_speedup`` = baseline ready_s / default ready_s; ``first_step_speedup`` likewise;
``rss_per_extra_worker_mb`` = (single agents_rss - baseline agents_rss / K) / (K - 1), the memory one more LeNet
worker slot costs. ``--large`` adds MOLS K=35 r=5 (f=49) and Ramanujan Case 2 K=25 r=5 with the default layout.

Targets (issue 13): ready_speedup >= 5 for 15 LeNet workers; rss_per_extra_worker_mb <= 40; the large runs finish
with peak_rss_mb well under 24 GB. Last line: JSON of all figures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = os.environ.get("SHIELD_MNIST_DIR") or str(REPO / "shield_model" / "zoo" / "embedded" / "mnist")
KB_MB = 1.0 / 1024


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * KB_MB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(p) for p in handle.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


class Sampler(threading.Thread):
    """Peak summed RSS of a PS process and its agent children, sampled every ``period`` seconds."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.agents_peak = self.total_peak = 0.0
        self.agent_processes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period):
            agents = _children(self.pid)
            agents_rss = sum(_rss_mb(p) for p in agents)
            self.agent_processes = max(self.agent_processes, len(agents))
            self.agents_peak = max(self.agents_peak, agents_rss)
            self.total_peak = max(self.total_peak, agents_rss + _rss_mb(self.pid))


def _events(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def run_config(name: str, flags: list[str], workers: int, steps: int, timeout: float) -> dict[str, Any]:
    """One ``serve`` run; its figures (seconds from launch, peak RSS)."""
    with tempfile.TemporaryDirectory(prefix=f"startup-{name}-") as tmp:
        train_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "shield_ps.cli", "serve", "--port", "0", "--plain", "--data-dir", MNIST_DIR,
               "--train-dir", str(train_dir), "--local-agents", str(workers), "--max-steps", str(steps),
               "--eval-freq", str(steps), *flags]
        launched = time.time()
        with open(Path(tmp) / "serve.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            sampler = Sampler(proc.pid)
            sampler.start()
            try:
                code = proc.wait(timeout=timeout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                sampler.stop.set()
                sampler.join()
        events = _events(train_dir / "metrics.jsonl")
        if code != 0:
            raise SystemExit(f"{name}: serve exited {code}:\n{(Path(tmp) / 'serve.log').read_text()[-3000:]}")
    ready = [e["time"] for e in events if e.get("kind") == "join" and e.get("ready") == workers]
    first_step = [e["time"] for e in events if e.get("kind") == "step"]
    summary = [e for e in events if e.get("kind") == "summary"]
    return {
        "ready_s": round(ready[0] - launched, 2) if ready else None,
        "first_step_s": round(first_step[0] - launched, 2) if first_step else None,
        "total_s": round(time.time() - launched, 2),
        "agents_rss_mb": round(sampler.agents_peak, 1),
        "peak_rss_mb": round(sampler.total_peak, 1),
        "agent_processes": sampler.agent_processes,
        "reason": summary[-1]["reason"] if summary else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=15, help="K of the LeNet comparison (default 15)")
    parser.add_argument("--scheme", default="mols", help="placement of the comparison (default mols)")
    parser.add_argument("--replication", type=int, default=3, help="r of the comparison (default 3)")
    parser.add_argument("--steps", type=int, default=5, help="training steps per run (default 5)")
    parser.add_argument("--large", action="store_true", help="also run MOLS K=35 r=5 and rama_two K=25 r=5")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per run")
    args = parser.parse_args()
    k = args.workers
    scheme = ["--scheme", args.scheme, "--workers", str(k), "--replication", str(args.replication)]
    figures: dict[str, Any] = {"workers": k, "cores": os.cpu_count()}
    runs = {
        "baseline": scheme + ["--agent-processes", str(k)],
        "default": scheme,
        "single": scheme + ["--agent-processes", "1"],
    }
    for name, flags in runs.items():
        if name == "single" and figures["default"]["agent_processes"] == 1:
            figures[name] = figures["default"]
        else:
            figures[name] = run_config(name, flags, k, args.steps, args.timeout)
        print(f"{name:>9}: {json.dumps(figures[name])}", flush=True)
    base, default, single = figures["baseline"], figures["default"], figures["single"]
    figures["ready_speedup"] = round(base["ready_s"] / default["ready_s"], 2)
    figures["first_step_speedup"] = round(base["first_step_s"] / default["first_step_s"], 2)
    figures["rss_per_extra_worker_mb"] = round((single["agents_rss_mb"] - base["agents_rss_mb"] / k) / (k - 1), 1)
    figures["agents_rss_ratio"] = round(base["agents_rss_mb"] / default["agents_rss_mb"], 2)
    if args.large:
        large = {"mols_k35": ["--scheme", "mols", "--workers", "35", "--replication", "5"],
                 "rama_two_k25": ["--scheme", "rama_two", "--workers", "25", "--replication", "5"]}
        for name, flags in large.items():
            workers = int(flags[3])
            figures[name] = run_config(name, flags, workers, args.steps, args.timeout)
            print(f"{name:>9}: {json.dumps(figures[name])}", flush=True)
    print(f"{k} LeNet workers ready: {base['ready_s']}s in {k} processes, {default['ready_s']}s in "
          f"{default['agent_processes']} -> ready_speedup {figures['ready_speedup']} (target >= 5)")
    print(f"agents' RSS: {base['agents_rss_mb']:.0f} MB in {k} processes, {default['agents_rss_mb']:.0f} MB in "
          f"{default['agent_processes']}; {single['agents_rss_mb']:.0f} MB in 1 -> rss_per_extra_worker_mb "
          f"{figures['rss_per_extra_worker_mb']} (target <= 40)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
