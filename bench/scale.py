"""The PS at the sizes the paper trains: K = 15, 25, 35 workers at d = 0.43M, 11.2M and 23.5M parameters (issue 16).

Each configuration is a real run on 127.0.0.1: ``shield-ps serve --synthetic-d D`` and K agent processes
``shield-agent join --synthetic SECONDS_PER_FILE`` (deterministic pseudo-gradients after a set delay standing for a
model's forward and backward pass; no torch). Placements: K=15 MOLS r=3 (f=25), K=25 Ramanujan case 2 r=5 (f=25),
K=35 MOLS r=5 (f=49). Per step (median over the measured steps, the first ``--warmup`` left out) it reports:

- the time after the last digest (the PS's critical path once every worker has computed: vote, the fetches not yet
  done, aggregation, update) against aggregation + update alone;
- PS ingress and egress bytes, also in units of d*4 (one vector);
- the aggregation time and the update time.

Configurations that would not fit in 3/4 of the machine's available memory (estimated from K, f and d by
:func:`footprint`: a synthetic agent holds 4 vectors of d whatever its number of files, the PS about 2.5f + 8) are
skipped and listed; each measured row has its estimate and the peak it reached (``peak_rss_gb``, the sum of the
processes' peak resident sets). Then the aggregation's 1 -> 2 thread speedup at d = 11.2M (n = f of K=15) for
every aggregator, measured alternately, best of ``--reps``, next to the speedup that a perfectly parallel kernel
(BLAKE3 on two threads, which holds no GIL) gets from this machine in the same minute: on a shared 2-core machine
the other core is often busy. Ends with one JSON line; its keys are the issue's contract:

    critical_path_vs_aggregate_update (d=11.2M, K=15), aggregate_2threads_speedup (aggregator -> ratio),
    egress_vs_d4_k35 (the relay broadcast, the default), relay_step_time_vs_direct_k15 (median step time with the relay
    broadcast over direct sends, --relay-pairs alternating runs at K = 15 and d = --relay-d)

    python bench/scale.py [--dims 430000,11200000,23500000] [--workers 15,25,35] [--seconds-per-file 1.0]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.append(str(REPO / "bench"))

import numpy as np  # noqa: E402
from aggregators import SPEEDUP_OTHERS, SPEEDUP_TARGETS, threads_speedup  # noqa: E402

from byzantine.placement import build_placement  # noqa: E402
from shield_ps.cli.serve import listening_port  # noqa: E402
from shield_ps.phases.names import TOTAL, Phase  # noqa: E402

TOKEN = "bench-scale-token-0123456789abcdef"
#: K -> (scheme, r): the placements measured.
PLACEMENTS = {15: ("mols", 3), 21: ("mols", 3), 25: ("rama_two", 5), 35: ("mols", 5)}
RESNET18_D = 11_200_000


class Cluster:
    """A PS and K synthetic agents on 127.0.0.1; :meth:`stop` ends every process it started, by PID."""

    def __init__(self, run_dir: Path, K: int, d: int, args: argparse.Namespace, extra: tuple[str, ...] = ()) -> None:
        scheme, r = PLACEMENTS[K]
        run_dir.mkdir(parents=True)
        self.run_dir = run_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.peaks: dict[int, int] = {}
        cmd = [sys.executable, "-m", "shield_ps.cli", "serve", "--port", "0", "--plain", "--token", TOKEN,
               "--synthetic-d", str(d), "--scheme", scheme, "--workers", str(K), "--replication", str(r),
               "--max-steps", str(args.steps + args.warmup), "--eval-freq", str(args.steps + args.warmup),
               "--aggregator", args.aggregator, "--train-dir", str(run_dir / "run"), "--join-timeout", "300",
               "--gather-timeout", "600", "--upload-timeout", "300", *args.serve_flags, *extra]
        # agents reconnect if the PS drops them (a send over its deadline on a loaded machine closes the link)
        self.ps = self._start(cmd, run_dir / "serve.log")
        port = self._port()
        for k in range(K):
            self._start([sys.executable, "-m", "shield_agent.cli", "join", f"127.0.0.1:{port}", "--token", TOKEN,
                         "--synthetic", str(args.seconds_per_file), "--name", f"bench-{k:02d}"],
                        run_dir / f"agent-{k:02d}.log")

    def _start(self, cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def _port(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        log = self.run_dir / "serve.log"
        while time.monotonic() < deadline:
            port = listening_port(log.read_text(errors="replace"))
            if port is not None:
                return port
            if self.ps.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the PS did not start:\n{log.read_text()[-2000:]}")

    def wait(self, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while self.ps.poll() is None:
            self._sample_memory()
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.ps.args, timeout)
            time.sleep(0.5)
        if self.ps.returncode != 0:
            raise RuntimeError(f"the run failed:\n{(self.run_dir / 'serve.log').read_text()[-3000:]}")
        lines = (self.run_dir / "run" / "metrics.jsonl").read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["kind"] == "step"]

    def _sample_memory(self) -> None:
        """Record every live process's peak resident set (VmHWM) so far."""
        for proc in self.procs:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), int(line.split()[1]) * 1024)

    def peak_bytes(self) -> int:
        """The sum of the processes' peak resident sets (an upper bound of the cluster's peak; sampled every 0.5 s,
        so a process's last half second may be missed)."""
        return sum(self.peaks.values())

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


#: Vectors of d float32 one synthetic agent (one slot, one compute thread) holds, whatever its l: two parameter
#: vectors, its compute thread's scratch and its payload vector (shield_agent.synthetic_slot.LazyFiles).
AGENT_VECTORS = 4
#: Vectors of d the PS holds besides 2.5 per file (the f rows, one spare buffer per file being fetched, and the
#: aggregation's and a few hedges' temporaries; at most f + 4 spares are kept across steps): parameters, momentum,
#: the two broadcast snapshots, the checkpoint's copies and a few more. Measured peaks (2026-11-30, after the fetch
#: stopped hedging payloads that keep pace): 41-43 vectors at K=15 and K=25 (f=25) at 11.2M, 52-58 at 23.5M, 120 at
#: K=35 (f=49) at 11.2M, where 144 (K=25) and 237 (K=35) were before; an agent 4 vectors and 67 MB.
PS_VECTORS = 8
#: Resident bytes of one process before any vector (interpreter, numpy, blake3, the wire; measured ~60 MB).
PROCESS_BYTES = 70_000_000


def footprint(K: int, d: int) -> int:
    """Estimated peak bytes of a configuration, the sum of its processes' peak resident sets (about what it holds
    at once): AGENT_VECTORS vectors of d per agent, 2.5 * f + PS_VECTORS at the PS, and PROCESS_BYTES per
    process. Checked against the measured ``peak_rss_gb`` of every row."""
    scheme, r = PLACEMENTS[K]
    placement = build_placement(scheme, K, r, None)
    vectors = K * AGENT_VECTORS + (5 * placement.f) // 2 + PS_VECTORS
    return vectors * d * 4 + (K + 1) * PROCESS_BYTES


def after_last_digest(times: dict[str, float]) -> float:
    """Seconds from the last digest to the end of the step (the PS's critical path once all have computed)."""
    if "after_last_digest" in times:
        return times["after_last_digest"]
    return times[TOTAL] - times[Phase.BROADCAST.value] - times[Phase.DIGEST_GATHER.value]


def measure(K: int, d: int, args: argparse.Namespace, tmp: Path, extra: tuple[str, ...] = (), tag: str = "") -> dict:
    scheme, r = PLACEMENTS[K]
    placement = build_placement(scheme, K, r, None)
    cluster = Cluster(tmp / f"K{K}-d{d}{tag}", K, d, args, extra)
    try:
        steps = cluster.wait(timeout=3600)[args.warmup:]
    finally:
        cluster.stop()
    peak = cluster.peak_bytes()
    ps_peak = cluster.peaks.get(cluster.ps.pid, 0)
    agent_peak = max((v for k, v in cluster.peaks.items() if k != cluster.ps.pid), default=0)
    med = lambda values: statistics.median(list(values))  # noqa: E731
    row = {
        "K": K, "d": d, "scheme": scheme, "r": r, "f": placement.f, "steps": len(steps),
        "step_s": med(s["times"][TOTAL] for s in steps),
        "after_last_digest_s": med(after_last_digest(s["times"]) for s in steps),
        "aggregate_s": med(s["times"][Phase.AGGREGATE.value] for s in steps),
        "update_s": med(s["times"][Phase.UPDATE.value] for s in steps),
        "ingress_bytes": med(s["bytes_in"] for s in steps), "egress_bytes": med(s["bytes_out"] for s in steps),
        "estimated_gb": round(footprint(K, d) / 1e9, 2), "peak_rss_gb": round(peak / 1e9, 2),
        "ps_peak_rss_gb": round(ps_peak / 1e9, 2), "agent_peak_rss_gb": round(agent_peak / 1e9, 3),
        "files_won": med(s["files_won"] for s in steps), "hedges": sum(s.get("hedges", 0) for s in steps),
        "slow_or_erased": sum(len(s.get("slow", [])) + len(s.get("erased", [])) for s in steps),
        "per_step": [[s["files_won"], round(s["bytes_in"] / (d * 4), 2), round(s["bytes_out"] / (d * 4), 2),
                      len(s.get("slow", [])), len(s.get("erased", [])), round(s["times"][TOTAL], 3)]
                     for s in steps],  # files won, ingress and egress in d*4, slow, erased, step seconds
    }
    row["critical_path_vs_aggregate_update"] = row["after_last_digest_s"] / (row["aggregate_s"] + row["update_s"])
    row["ingress_vs_d4"] = row["ingress_bytes"] / (d * 4)
    row["egress_vs_d4"] = row["egress_bytes"] / (d * 4)
    return row


def relay_comparison(args: argparse.Namespace, tmp: Path) -> dict:
    """K = 15 at d = ``args.relay_d``: ``args.relay_pairs`` pairs of runs with the relay broadcast and with direct
    sends, alternating which goes first; the ratio of the medians of their median step times."""
    times: dict[str, list[float]] = {"on": [], "off": []}
    egress: dict[str, list[float]] = {"on": [], "off": []}
    for pair in range(args.relay_pairs):
        for relay in (("on", "off") if pair % 2 == 0 else ("off", "on")):
            row = measure(15, args.relay_d, args, tmp, ("--relay", relay), tag=f"-relay-{relay}-{pair}")
            times[relay].append(row["step_s"])
            egress[relay].append(row["egress_vs_d4"])
            print(f"K=15 d={args.relay_d:>10,} relay {relay:3s}: step {row['step_s']:.3f} s, egress "
                  f"{row['egress_vs_d4']:.2f} d*4", flush=True)
    ratio = statistics.median(times["on"]) / statistics.median(times["off"])
    return {"ratio": ratio, "step_s": times, "egress_vs_d4": egress}


def parallel_ceiling(reps: int, mb: int = 256) -> float:
    """1 -> 2 thread speedup this machine gives right now to work that holds no GIL (BLAKE3 of two buffers,
    sequentially vs on two threads), best of ``reps``, alternating."""
    from concurrent.futures import ThreadPoolExecutor

    from wire.digest import digest_bytes

    buffers = [np.random.default_rng(i).integers(0, 255, mb << 20, dtype=np.uint8) for i in range(2)]
    best = {1: float("inf"), 2: float("inf")}
    with ThreadPoolExecutor(2) as pool:
        for rep in range(reps):
            for count in ((1, 2) if rep % 2 == 0 else (2, 1)):
                started = time.perf_counter()
                if count == 1:
                    for buf in buffers:
                        digest_bytes(memoryview(buf))
                else:
                    list(pool.map(lambda buf: digest_bytes(memoryview(buf)), buffers))
                best[count] = min(best[count], time.perf_counter() - started)
    return best[1] / best[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="430000,11200000,23500000", help="comma-separated d")
    parser.add_argument("--workers", default="15,25,35", help=f"comma-separated K from {sorted(PLACEMENTS)}")
    parser.add_argument("--seconds-per-file", type=float, default=1.0, help="synthetic compute per file")
    parser.add_argument("--steps", type=int, default=4, help="steps measured per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out")
    parser.add_argument("--aggregator", default="coord-median")
    parser.add_argument("--reps", type=int, default=5, help="alternating repetitions of the thread speedup")
    parser.add_argument("--memory-share", type=float, default=0.75,
                        help="run a configuration only if its estimate (an upper bound: the sum of its processes' "
                        "peaks) fits in this share of MemAvailable, in (0, 1]")
    parser.add_argument("--skip-threads", action="store_true", help="leave out the aggregation thread speedup")
    parser.add_argument("--skip-clusters", action="store_true", help="only the aggregation thread speedup")
    parser.add_argument("--relay-pairs", type=int, default=2,
                        help="pairs of K = 15 runs, relay broadcast on and off (0: leave the comparison out)")
    parser.add_argument("--relay-d", type=int, default=RESNET18_D, help="d of the relay comparison")
    parser.add_argument("--keep", help="keep the runs' directories (logs, metrics.jsonl) under this directory")
    parser.add_argument("--serve-flags", default="--min-bandwidth 1",
                        help="extra flags for shield-ps serve, one string (default: deadlines for a loaded machine, "
                        "--min-bandwidth 1 MB/s, so that no link is cut off as slow)")
    args = parser.parse_args()
    args.serve_flags = args.serve_flags.split()
    if not 0 < args.memory_share <= 1:
        parser.error(f"--memory-share must be in (0, 1], got {args.memory_share}")
    dims = [int(x) for x in args.dims.split(",")]
    workers = [int(x) for x in args.workers.split(",")]
    unknown = sorted(set(workers) - set(PLACEMENTS))
    if unknown:
        parser.error(f"--workers: no placement for K={unknown}; choose from {sorted(PLACEMENTS)}")

    rows, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="shield-bench-scale-") as scratch:
        tmp = args.keep or scratch
        for d, K in ([] if args.skip_clusters else [(d, K) for d in dims for K in workers]):
            need, have = footprint(K, d), available_bytes()
            if need > args.memory_share * have:
                skipped.append({"K": K, "d": d, "estimated_gb": round(need / 1e9, 1),
                                "available_gb": round(have / 1e9, 1)})
                print(f"K={K:2d} d={d:>10,}: skipped (needs ~{need / 1e9:.1f} GB, {have / 1e9:.1f} GB "
                      "available)", flush=True)
                continue
            row = measure(K, d, args, Path(tmp))
            rows.append(row)
            print(f"K={K:2d} d={d:>10,} f={row['f']:3d}: step {row['step_s']:6.2f} s, after last digest "
                  f"{row['after_last_digest_s']:6.3f} s = {row['critical_path_vs_aggregate_update']:5.2f} x "
                  f"(aggregate {row['aggregate_s']:.3f} + update {row['update_s']:.3f}); ingress "
                  f"{row['ingress_vs_d4']:5.1f} d*4, egress {row['egress_vs_d4']:5.1f} d*4; files won "
                  f"{row['files_won']:.0f}, hedges {row['hedges']}, slow/erased {row['slow_or_erased']}; peak RSS "
                  f"{row['peak_rss_gb']:.1f} GB (estimated {row['estimated_gb']:.1f})", flush=True)

    figures: dict = {"seconds_per_file": args.seconds_per_file, "aggregator": args.aggregator, "rows": rows,
                     "skipped": skipped}
    k15 = [r for r in rows if r["K"] == 15 and r["d"] == RESNET18_D]
    figures["critical_path_vs_aggregate_update"] = (round(k15[0]["critical_path_vs_aggregate_update"], 3)
                                                    if k15 else None)
    k35 = sorted((r for r in rows if r["K"] == 35), key=lambda r: -r["d"])
    figures["egress_vs_d4_k35"] = round(k35[0]["egress_vs_d4"], 3) if k35 else None
    figures["relay_step_time_vs_direct_k15"] = None
    if args.relay_pairs > 0 and not args.skip_clusters:
        with tempfile.TemporaryDirectory(prefix="shield-bench-relay-") as scratch:
            comparison = relay_comparison(args, Path(args.keep or scratch))
        figures["relay_step_time_vs_direct_k15"] = round(comparison["ratio"], 3)
        figures["relay_comparison"] = {"d": args.relay_d, **comparison}

    need = int(25 * RESNET18_D * 4 * 1.15)  # X, plus the scratch, the output and the Gram products
    if not args.skip_threads and need > args.memory_share * available_bytes():
        print(f"aggregation thread speedup skipped: needs ~{need / 1e9:.1f} GB, "
              f"{available_bytes() / 1e9:.1f} GB available")
        args.skip_threads = True
    if not args.skip_threads:
        X = np.random.default_rng(0).standard_normal((25, RESNET18_D), dtype=np.float32)
        ceiling_before = parallel_ceiling(3)
        speed = threads_speedup(X, SPEEDUP_TARGETS + SPEEDUP_OTHERS, s=2, reps=args.reps)
        ceiling_after = parallel_ceiling(3)
        del X
        for name, v in speed.items():
            print(f"{name:18s} 1 thread {v['1_thread_s']:.3f} s, 2 threads {v['2_threads_s']:.3f} s: "
                  f"{v['speedup']:.2f}x (cpu split {v['cpu_split_speedup']:.2f}x)")
        print(f"a GIL-free kernel (BLAKE3) on 2 threads, same run: {ceiling_before:.2f}x before, "
              f"{ceiling_after:.2f}x after")
        figures["aggregate_2threads_speedup"] = {k: round(v["speedup"], 3) for k, v in speed.items()}
        figures["aggregate_2threads_cpu_split"] = {k: round(v["cpu_split_speedup"], 3) for k, v in speed.items()}
        figures["aggregate_threads_seconds"] = {k: [round(v["1_thread_s"], 4), round(v["2_threads_s"], 4)]
                                                for k, v in speed.items()}
        figures["machine_2threads_ceiling"] = [round(ceiling_before, 3), round(ceiling_after, 3)]
    else:
        figures["aggregate_2threads_speedup"] = None
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float):
                row[key] = round(value, 4)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
