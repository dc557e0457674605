"""A fleet in a box (issue 22): shield over real links between network namespaces, against what the links allow.

Every run is a real cluster in the fleet bed (tests/fleet_bed.py: a namespace per process, a bridge, per-link rate by
``tc tbf``, delay/jitter by netem or, where the kernel lacks it, by the NFQUEUE delay daemon tests/linkd.py, loss and
partitions by iptables): ``shield-ps serve --synthetic-d D`` and synthetic agents, one process per namespace. Needs
root. The figures, and the JSON line's keys (the issue's contract):

- ``step_vs_bound_1gbit_20ms``: median over measured steps of step time / lower bound, every link 1 Gbit/s with
  20 ms delay on arrival (RTT 40 ms), K = 15, d = 11.2M. The bound of a step: the parameters reach one agent
  (RTT/2 + d*4/R), then the later of the slowest agent's compute plus one fetch (d*4/R + RTT) and the first file's
  compute plus the PS's whole ingress (f*d*4/R + RTT), then the PS's aggregation and update as that step measured
  them. compute_s comes from the PS's ``worker`` events.
- ``relay_step_speedup_1gbit_k15``: median step time with ``--relay off`` over ``--relay on``, PS uplink 1 Gbit/s,
  agent links 1 Gbit/s (the PS's downlink, which the issue leaves open, 10 Gbit/s); alternating pairs of runs.
- ``lossy_wan_honest_files_dropped``: files dropped over a run with 1% loss and 40 ms delay on every link (RTT 80 ms;
  no Byzantine agent, so every file is honest).
- ``partition_heal_steps``: one agent cut off for 30 s; steps started after the heal until one in which it sent its
  digests (0: the first step after the heal).
- ``codecs``: ``--codec auto`` against each fixed codec at 100 Mbit/s, 1 and 10 Gbit/s (bench/wire_shaped.py's
  sender and receiver in two namespaces), what auto picked, and auto over the best fixed codec's throughput.

    python bench/fleet.py [--only bound,relay,lossy,partition,codecs] [--d 11200000] [--steps 4]

The machine's load average is printed with each figure and in the JSON line: on a shared 2-core machine the step
times are noisy, the ratios less so (each against its own bound or its own pair).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from byzantine.placement import build_placement  # noqa: E402
from shield_ps.phases.names import TOTAL, Phase  # noqa: E402
from tests.fleet_bed import FleetBed, Link, rate_bytes, unavailable  # noqa: E402
from tests.fleet_cluster import BedCluster  # noqa: E402

RESNET18_D = 11_200_000
K15 = ("mols", 15, 3)
SCENARIOS = ("bound", "relay", "lossy", "partition", "codecs")
AGGREGATE, UPDATE = Phase.AGGREGATE.value, Phase.UPDATE.value


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def say(text: str) -> None:
    print(f"[load {' '.join(map(str, load()))}] {text}", flush=True)


def compute_times(cluster: BedCluster) -> dict[int, dict[int, float]]:
    """step -> worker -> compute_s, from the PS's ``worker`` events (state done)."""
    out: dict[int, dict[int, float]] = {}
    for event in cluster.events("worker"):
        if event.get("state") == "done" and event.get("compute_s") is not None:
            out.setdefault(event["step"], {})[event["worker"]] = float(event["compute_s"])
    return out


def run_cluster(tmp: Path, name: str, *, d: int, ps_link: Link, agent_link: Link, steps: int, seconds: float,
                serve_flags: tuple[str, ...] = (), during: Any = None) -> tuple[list[dict], BedCluster, dict]:
    """One K=15 run in a fresh bed; its step events, the cluster (for its logs) and the delay daemon's counters."""
    scheme, workers, r = K15
    run_dir = tmp / name
    with FleetBed() as bed:
        cluster = BedCluster(bed, run_dir, d=d, scheme=scheme, workers=workers, replication=r, ps_link=ps_link,
                             agent_links=[agent_link] * workers, seconds_per_file=seconds, steps=steps,
                             serve_flags=serve_flags)
        if during is not None:
            during(bed, cluster)
        events = cluster.wait_done(timeout=3600)
        stats = bed.linkd_stats()
    return events, cluster, stats


def lag(stats: dict) -> float:
    """The most any delayed packet was released late by the delay daemon (its fidelity under this load), ms."""
    return round(max((q.get("late_max", 0.0) for q in stats.values()), default=0.0) * 1e3, 1)


# ---- step time against the links' bound -------------------------------------------------------------------------
def bound_figure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rate, delay = "1gbit", 0.020
    link = Link(rate=rate, delay=delay)
    events, cluster, stats = run_cluster(tmp, "bound", d=args.d, ps_link=link, agent_link=link,
                                         steps=args.steps + 1, seconds=args.seconds_per_file)
    placement = build_placement(*K15, None)
    f, files_per_worker = placement.f, placement.f * K15[2] // K15[1]
    vector, R, rtt = args.d * 4, rate_bytes(rate), 2 * delay
    compute = compute_times(cluster)
    rows = []
    for event in events[1:]:  # the first step measures the links (codec, hedge delay): left out
        per_worker = compute.get(event["step"], {})
        if not per_worker:
            continue
        slowest = max(per_worker.values())
        first_file = min(per_worker.values()) / files_per_worker
        times = event["times"]
        bound = (rtt / 2 + vector / R + max(slowest + vector / R + rtt, first_file + f * vector / R + rtt)
                 + times[AGGREGATE] + times[UPDATE])
        rows.append({"step": event["step"], "step_s": round(times[TOTAL], 3), "bound_s": round(bound, 3),
                     "ratio": round(times[TOTAL] / bound, 3), "slowest_compute_s": round(slowest, 3),
                     "aggregate_update_s": round(times[AGGREGATE] + times[UPDATE], 3),
                     "files_won": event["files_won"], "hedges": event["hedges"], "codecs": event.get("codecs")})
    ratio = statistics.median(r["ratio"] for r in rows) if rows else None
    say(f"bound: {json.dumps(rows)}; delay daemon lag {lag(stats)} ms")
    return {"step_vs_bound_1gbit_20ms": ratio, "bound_steps": rows, "bound_linkd_lag_ms": lag(stats),
            "bound_profile": f"K=15 d={args.d} every link {link.describe()}"}


# ---- relay on / off -----------------------------------------------------------------------------------------------
def relay_figure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ps_link, agent_link = Link(up="1gbit", down="10gbit"), Link(rate="1gbit")
    medians: dict[str, list[float]] = {"on": [], "off": []}
    for pair in range(args.pairs):
        for mode in (("off", "on") if pair % 2 == 0 else ("on", "off")):
            events, _, _ = run_cluster(tmp, f"relay-{mode}-{pair}", d=args.d, ps_link=ps_link, agent_link=agent_link,
                                       steps=args.steps + 1, seconds=args.relay_seconds_per_file,
                                       serve_flags=("--relay", mode))
            step = statistics.median(e["times"][TOTAL] for e in events[1:])
            medians[mode].append(step)
            say(f"relay {mode} (pair {pair}): median step {step:.3f} s, egress "
                f"{statistics.median(e['bytes_out'] for e in events[1:]) / (args.d * 4):.2f} d*4")
    speedup = statistics.median(medians["off"]) / statistics.median(medians["on"])
    return {"relay_step_speedup_1gbit_k15": round(speedup, 3), "relay_steps_s": medians,
            "relay_profile": f"K=15 d={args.d} PS {ps_link.describe()}, agents {agent_link.describe()}"}


# ---- a lossy WAN --------------------------------------------------------------------------------------------------
def lossy_figure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    link = Link(rate=args.lossy_rate, delay=0.040, loss=0.01)
    events, _, stats = run_cluster(tmp, "lossy", d=args.lossy_d, ps_link=link, agent_link=link,
                                         steps=args.lossy_steps, seconds=args.seconds_per_file)
    dropped = sum(e["files_dropped"] for e in events)
    say(f"lossy: steps {[round(e['times']['total'], 2) for e in events]}, dropped {dropped}, hedges "
        f"{[e['hedges'] for e in events]}, slow {[e.get('slow') for e in events]}, erased "
        f"{[e.get('erased') for e in events]}; delay daemon lag {lag(stats)} ms")
    return {"lossy_wan_honest_files_dropped": dropped, "lossy_steps_s": [round(e["times"][TOTAL], 2) for e in events],
            "lossy_hedges": sum(e["hedges"] for e in events),
            "lossy_erased": sum(len(e.get("erased", [])) for e in events),
            "lossy_profile": f"K=15 d={args.lossy_d} every link {link.describe()}"}


# ---- a partition that heals ---------------------------------------------------------------------------------------
def partition_figure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    link = Link(rate="1gbit", delay=0.020)
    marks: dict[str, float] = {}

    def during(bed: FleetBed, cluster: BedCluster) -> None:
        cluster.wait_steps(2, timeout=600)
        victim = cluster.agent_nodes[3]
        bed.partition(victim)
        marks["cut"] = time.time()
        time.sleep(args.partition_s)
        bed.partition(victim, cut=False)
        marks["heal"] = time.time()
        say(f"partition: {victim.name} cut for {args.partition_s:.0f} s")

    events, cluster, _ = run_cluster(tmp, "partition", d=args.partition_d, ps_link=link, agent_link=link,
                                     steps=args.partition_steps, seconds=args.seconds_per_file, during=during)
    victim_workers = _workers_of(cluster, "a03")
    after = [e for e in events if e["time"] - e["times"][TOTAL] >= marks["heal"]]
    heal_steps = next((i for i, e in enumerate(after) if not victim_workers & set(e.get("erased", []))), None)
    say(f"partition: worker(s) {sorted(victim_workers)}; erased per step after the heal "
        f"{[sorted(victim_workers & set(e.get('erased', []))) for e in after]}; steps {heal_steps}")
    return {"partition_heal_steps": heal_steps, "partition_step_s": [round(e["times"][TOTAL], 2) for e in events],
            "partition_profile": f"K=15 d={args.partition_d} every link {link.describe()}, one agent cut "
                                 f"{args.partition_s:.0f} s"}


def _workers_of(cluster: BedCluster, name: str) -> set[int]:
    """The worker ids the PS gave agent ``name`` (its ``worker`` events carry the agent's address)."""
    node = next(n for n in cluster.agent_nodes if n.name == name)
    return {e["worker"] for e in cluster.events("worker")
            if str(e.get("address", "")).rsplit(":", 1)[0] == node.address}


# ---- codecs per link ----------------------------------------------------------------------------------------------
def codec_figures(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    shaped = REPO / "bench" / "wire_shaped.py"
    out: dict[str, Any] = {}
    for rate in ("100mbit", "1gbit", "10gbit"):
        with FleetBed() as bed:
            rx, tx = bed.add("rx", Link(rate=rate)), bed.add("tx", Link(rate=rate))
            receiver = subprocess.Popen(rx.command([sys.executable, str(shaped), "--serve", rx.address, "7791",
                                                    str(args.d)]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
            try:
                assert receiver.stdout is not None
                if receiver.stdout.readline().strip() != b"ready":
                    raise RuntimeError("the receiver did not start")
                reps = 2 if rate == "100mbit" else args.codec_reps
                sender = subprocess.run(tx.command([sys.executable, str(Path(__file__).resolve()), "--codec-sender",
                                                    rx.address, "7791", str(args.d), str(reps)]),
                                        capture_output=True, text=True, timeout=1800, check=False,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
                if sender.returncode != 0:
                    raise RuntimeError(sender.stderr[-2000:])
                result = json.loads(sender.stdout.strip().splitlines()[-1])
            finally:
                if receiver.stdin is not None:
                    receiver.stdin.close()
                FleetBed.stop(receiver)
        rates = {c: round(args.d * 4 / s / 1e6, 1) for c, s in result["seconds"].items()}
        fixed = max((c for c in rates if c != "auto"), key=rates.__getitem__)
        out[rate] = {"auto_picked": result["picked"]["auto"][-1], "mb_s": rates, "best_fixed": fixed,
                     "auto_vs_best_fixed": round(rates["auto"] / rates[fixed], 3)}
        say(f"codecs at {rate}: {out[rate]}")
    return {"codecs": out}


def codec_sender(host: str, port: int, d: int, reps: int) -> None:
    sys.path.append(str(REPO / "bench"))
    import asyncio

    from wire_shaped import send_all, synthetic_vector

    import wire

    wire.install_event_loop()
    x = synthetic_vector(d)
    picked: dict[str, list[str]] = {}

    async def main() -> dict[str, float]:
        return await send_all(host, port, x, reps, 2, picked=picked)

    seconds = asyncio.run(main())
    print(json.dumps({"seconds": seconds, "picked": picked}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--codec-sender":
        codec_sender(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--d", type=int, default=RESNET18_D)
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run (plus one first step)")
    parser.add_argument("--seconds-per-file", type=float, default=1.0)
    parser.add_argument("--relay-seconds-per-file", type=float, default=0.2)
    parser.add_argument("--pairs", type=int, default=2, help="relay on/off pairs of runs")
    parser.add_argument("--lossy-d", type=int, default=RESNET18_D)
    parser.add_argument("--lossy-rate", default="1gbit")
    parser.add_argument("--lossy-steps", type=int, default=2, help="steps of the lossy run (each takes minutes)")
    parser.add_argument("--partition-d", type=int, default=1_000_000)
    parser.add_argument("--partition-s", type=float, default=30.0)
    parser.add_argument("--partition-steps", type=int, default=16)
    parser.add_argument("--codec-reps", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the runs' directories (logs, metrics)")
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s]
    bad = sorted(set(only) - set(SCENARIOS))
    if bad:
        parser.error(f"--only: unknown {', '.join(bad)}; choose among {', '.join(SCENARIOS)}")
    why = unavailable()
    if why is not None:
        print(json.dumps({"skipped": why}))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped bench still removes its bed (finally)
    figures: dict[str, Any] = {"load_start": load()}
    tmp = Path(tempfile.mkdtemp(prefix="shield-fleet-"))
    try:
        for name, figure in (("bound", bound_figure), ("relay", relay_figure), ("lossy", lossy_figure),
                             ("partition", partition_figure), ("codecs", codec_figures)):
            if name in only:
                started = time.monotonic()
                figures.update(figure(args, tmp))
                figures[f"{name}_wall_s"] = round(time.monotonic() - started, 1)
    finally:
        if args.keep:
            print(f"runs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    figures["load_end"] = load()
    keys = ("step_vs_bound_1gbit_20ms", "relay_step_speedup_1gbit_k15", "lossy_wan_honest_files_dropped",
            "partition_heal_steps")
    head = {k: figures.pop(k, None) for k in keys}
    print(json.dumps({**head, **figures}))


if __name__ == "__main__":
    main()
