"""PS-side cost of a training step on a real local cluster (PS + K agent processes on 127.0.0.1).

Runs ``shield-ps serve --local-agents K`` twice with the same seed, once alone and once with a ``shield-ps watch``
attached, and reads each run's ``metrics.jsonl``. Reports, per step (median over the measured steps):

- PS-side time = broadcast + vote + aggregate + update (what the PS itself spends: broadcast is the snapshot, encode
  and hand-off of the STEP frames, whose delivery overlaps the agents' compute; agents' compute and the payload
  fetch are excluded), against the time of the aggregator alone on an (f, d) float32 array of the same size,
  measured in this process in the same run (target: PS-side <= 2x aggregator);
- PS ingress bytes against f*d*4 (target <= 1.1; the original ByzShield moves f*r*d*4);
- PS-side time with a watcher against without (target: within noise, ~1.0).

The last line is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shield_ps import aggregate  # noqa: E402
from shield_ps.cli.serve import listening_port  # noqa: E402
from shield_ps.config import ServeConfig  # noqa: E402
from shield_ps.job import resolve_job  # noqa: E402
from shield_ps.phases.names import TOTAL, Phase  # noqa: E402

TOKEN = "bench-step-token-0123456789abcdef"
PS_PHASES = tuple(p.value for p in (Phase.BROADCAST, Phase.VOTE, Phase.AGGREGATE, Phase.UPDATE))
#: The phases the agents' compute and the payloads set (the digest gather, the payload fetch).
WAIT_PHASES = (Phase.DIGEST_GATHER.value, Phase.PAYLOAD_FETCH.value)


def _serve(train_dir: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "shield_ps.cli", "serve", "--port", "0", "--plain", "--token", TOKEN,
           "--local-agents", str(args.workers), "--scheme", args.scheme, "--workers", str(args.workers),
           "--replication", str(args.replication), "--network", args.network, "--dataset", "MNIST",
           "--data-dir", args.data_dir, "--max-steps", str(args.steps), "--eval-freq", str(args.steps),
           "--aggregator", args.aggregator, "--codec", "none", "--train-dir", str(train_dir),
           "--join-timeout", "300"]
    log = open(train_dir / "serve.log", "wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _port(train_dir: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port = listening_port((train_dir / "serve.log").read_text(errors="replace"))
        if port is not None:
            return port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise SystemExit(f"the PS did not start:\n{(train_dir / 'serve.log').read_text()[-2000:]}")


def run_cluster(train_dir: Path, args: argparse.Namespace, watch: bool) -> list[dict]:
    train_dir.mkdir(parents=True)
    ps = _serve(train_dir, args)
    watcher = None
    try:
        if watch:
            port = _port(train_dir, ps)
            watcher = subprocess.Popen([sys.executable, "-m", "shield_ps.cli", "watch", f"127.0.0.1:{port}",
                                        "--token", TOKEN, "--plain"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        if ps.wait(timeout=1800) != 0:
            raise SystemExit(f"the run failed:\n{(train_dir / 'serve.log').read_text()[-2000:]}")
    finally:
        for proc in (watcher, ps):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    events = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    return [e for e in events if e["kind"] == "step"]


def aggregator_alone(name: str, f: int, d: int, kwargs: dict, reps: int = 7) -> float:
    X = np.random.default_rng(0).standard_normal((f, d)).astype(np.float32)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        aggregate(name, X, **kwargs)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheme", default="mols")
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--replication", type=int, default=3)
    parser.add_argument("--network", default="LeNet")
    parser.add_argument("--aggregator", default="coord-median")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the figures")
    parser.add_argument("--rounds", type=int, default=2, help="alternating (alone, watched) pairs of runs")
    parser.add_argument("--data-dir", default=os.environ.get("SHIELD_MNIST_DIR") or
                        str(REPO / "shield_model" / "zoo" / "embedded" / "mnist"),
                        help="MNIST directory (default: $SHIELD_MNIST_DIR, else the test split embedded in the "
                             "package)")
    args = parser.parse_args()

    plan = resolve_job(ServeConfig(scheme=args.scheme, workers=args.workers, replication=args.replication,
                                   aggregator=args.aggregator, max_steps=args.steps))
    f, r = plan.placement.f, plan.placement.r
    alone: list[dict] = []
    watched: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="shield-bench-step-") as tmp:
        for round_ in range(args.rounds):  # alternate, so drifting machine load hits both alike
            alone += run_cluster(Path(tmp) / f"alone{round_}", args, watch=False)[args.warmup:]
            watched += run_cluster(Path(tmp) / f"watched{round_}", args, watch=True)[args.warmup:]
        d = _param_count(Path(tmp) / "alone0")

    def ps_side(steps: list[dict]) -> float:
        return statistics.median(sum(s["times"].get(p, 0.0) for p in PS_PHASES) for s in steps)

    ps_alone, ps_watched = ps_side(alone), ps_side(watched)
    agg = aggregator_alone(plan.aggregator.value, f, d, plan.aggregation_kwargs(0))
    ingress = statistics.median(s["bytes_in"] for s in alone)
    floor = f * d * 4
    figures = {
        "scheme": args.scheme, "K": args.workers, "f": f, "r": r, "d": d, "aggregator": plan.aggregator.value,
        "steps_measured": len(alone), "ps_side_s": round(ps_alone, 5), "aggregator_alone_s": round(agg, 5),
        "ps_side_vs_aggregator": round(ps_alone / agg, 3), "ingress_bytes": int(ingress),
        "ingress_vs_fd4": round(ingress / floor, 4), "original_ingress_vs_fd4": r,
        "ps_side_watched_s": round(ps_watched, 5), "watched_vs_alone": round(ps_watched / ps_alone, 3),
        "step_total_s": round(statistics.median(s["times"][TOTAL] for s in alone), 4),
    }
    print(f"cluster: {args.scheme} K={args.workers} f={f} r={r}, {args.network} (d={d:,}), "
          f"{plan.aggregator.value}, {len(alone)} steps measured")
    print(f"PS-side time per step (broadcast+vote+aggregate+update): {ps_alone * 1e3:.1f} ms")
    for name, steps in (("alone", alone), ("watched", watched)):
        phases = {p: statistics.median(s["times"].get(p, 0.0) for s in steps) for p in PS_PHASES + WAIT_PHASES}
        print(f"  phases ({name}, median ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in phases.items()))
        figures[f"phases_{name}_ms"] = {k: round(v * 1e3, 2) for k, v in phases.items()}
    print(f"aggregator alone on ({f}, {d}): {agg * 1e3:.1f} ms -> ratio {ps_alone / agg:.2f} (target <= 2)")
    print(f"PS ingress per step: {ingress:,.0f} B = {ingress / floor:.3f} x f*d*4 (target <= 1.1; the original "
          f"moves {r} x)")
    print(f"PS-side time with a watcher attached: {ps_watched * 1e3:.1f} ms -> ratio {ps_watched / ps_alone:.3f} "
          f"(target ~1)")
    print(json.dumps(figures))


def _param_count(train_dir: Path) -> int:
    from shield_ps.checkpoint import load_latest

    checkpoint = load_latest(train_dir / "checkpoints")
    assert checkpoint is not None
    return int(checkpoint.params.size)


if __name__ == "__main__":
    main()
