"""Benchmark: every robust aggregator and the exact vote at ResNet-18 size (n = 25, d = 11.2M float32).

Baselines are measured in the same run: ``np.median(X, axis=0)`` for the coordinate median, an O(n^2) loop of
``np.linalg.norm(x_i - x_j)`` for the pairwise distances of the Krum family, and bare BLAKE3 hashing for the vote.
Peak memory per aggregator is measured with tracemalloc (numpy reports its buffers to it) and printed in copies of
the (n, d) input. Sort-based aggregators run with their default threads (DEFAULT_THREADS; OpenBLAS threads the
Gram matrix of the Krum family likewise) and once more on one thread. Ends with one JSON line of the figures.

    python bench/aggregators.py [--n 25] [--dim 11200000] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from byzantine.aggregators import uses_byzantine_count
from byzantine.vote import vote_digests
from shield_ps import AGGREGATORS, aggregate
from wire.digest import digest_bytes


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measured(fn: Callable[[], object], input_bytes: int, reps: int = 2,
             memory: bool = True) -> tuple[float, float, float, object]:
    """(wall seconds, CPU seconds of all threads, peak extra memory in copies of the input, result). Times are the
    best of ``reps`` runs without tracemalloc (it adds ~1.7 us to every numpy call, which penalises aggregators made
    of many small calls); the memory peak comes from one more run under tracemalloc. CPU seconds are the
    load-independent figure on a shared machine."""
    best = (float("inf"), 0.0)
    out: object = None
    for _ in range(reps):
        cpu = time.process_time()
        seconds, out = timed(fn)
        cpu = time.process_time() - cpu
        best = min(best, (seconds, cpu))
    peak = 0
    if memory:
        tracemalloc.start()
        try:
            fn()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return best[0], best[1], peak / input_bytes, out


#: The aggregators whose 1 -> 2 thread speedup issue 16 targets (>= 1.7x at d = 11.2M), and the others measured.
SPEEDUP_TARGETS = ("coord-median", "trimmed-mean", "multi-krum")
SPEEDUP_OTHERS = ("bulyan", "geometric-median", "sign-sgd")


def threads_speedup(X: np.ndarray, names: tuple[str, ...], s: int, reps: int = 5,
                    threads: int = 2) -> dict[str, dict[str, float]]:
    """Per aggregator: best-of-``reps`` wall seconds on 1 and on ``threads`` threads, measured alternately (1, N,
    N, 1, ...) so that a burst of load on a shared machine hits both, and their ratio. Also the CPU-time ratio
    ``cpu(1 thread) / (cpu(N threads) / N)`` (how evenly the work splits; it cannot see GIL waits or a core taken
    by another process, so the wall ratio is the figure)."""
    out: dict[str, dict[str, float]] = {}
    for name in names:
        params = {"s": s} if uses_byzantine_count(name) else {}
        best = {1: (float("inf"), 0.0), threads: (float("inf"), 0.0)}
        for rep in range(reps):
            for count in ((1, threads) if rep % 2 == 0 else (threads, 1)):
                cpu = time.process_time()
                seconds, _ = timed(lambda: aggregate(name, X, check_finite_input=False, threads=count, **params))  # noqa: B023 (timed within this iteration)
                best[count] = min(best[count], (seconds, time.process_time() - cpu))
        (one, one_cpu), (many, many_cpu) = best[1], best[threads]
        out[name] = {"1_thread_s": one, f"{threads}_threads_s": many, "speedup": one / many,
                     "cpu_split_speedup": one_cpu / max(many_cpu / threads, 1e-9)}
    return out


def pairwise_loop(X: np.ndarray) -> np.ndarray:
    """The obvious baseline (as the original ByzShield code): one d-vector subtraction per pair."""
    n = X.shape[0]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            D[i, j] = D[j, i] = float(np.linalg.norm(X[i] - X[j]) ** 2)
    return D


def bench_vote(X: np.ndarray, replicas: int, threads: int) -> dict[str, float]:
    """Hash ``replicas`` = 3n replica vectors and vote: file i is row i, its replica k is worker i + k*n. Hashing
    cycles over the rows, so every replica is read from memory, not from cache."""
    n = X.shape[0]
    files = replicas // 3
    rows = [X[k % n] for k in range(replicas)]
    total_bytes = sum(r.nbytes for r in rows)
    hash_s, digests = timed(lambda: [digest_bytes(memoryview(r).cast("B")) for r in rows])
    holders = [(i, i + n, i + 2 * n) for i in range(files)]
    replies = [{w: digests[w] for w in ws} for ws in holders]
    vote_s, result = timed(lambda: vote_digests(holders, replies, 2))
    assert len(result.files_won) == files
    par_s, _ = timed(lambda: [digest_bytes(memoryview(r).cast("B"), threads=threads) for r in rows])
    read_s, _ = timed(lambda: [float(r.sum()) for r in rows])
    return {
        "vote_replicas": replicas, "vote_hash_s": hash_s, "vote_only_s": vote_s,
        "vote_gbps": total_bytes / (hash_s + vote_s) / 1e9, "hash_parallel_gbps": total_bytes / par_s / 1e9,
        "read_pass_gbps": total_bytes / read_s / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=25)
    parser.add_argument("--dim", type=int, default=11_200_000)
    parser.add_argument("--s", type=int, default=2,
                        help="Byzantine count for the s-aware aggregators (2 = c_max(5) of ByzShield's K=25, r=5)")
    parser.add_argument("--s-high", type=int, default=5, help="a second, near-maximal s for multi-krum and bulyan")
    parser.add_argument("--threads", type=int, default=2, help="BLAKE3 threads for the parallel-hash figure")
    args = parser.parse_args()
    if args.s_high <= args.s or args.n < 4 * args.s_high + 3:
        parser.error("need --s < --s-high and --n >= 4 * s-high + 3 (bulyan's precondition)")

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    X[: args.s_high] *= 10  # a few outliers so the robust rules have something to reject
    nbytes = X.nbytes
    print(f"n={args.n} d={args.dim} ({nbytes / 1e9:.2f} GB float32), s={args.s}")
    figures: dict[str, float] = {"n": args.n, "d": args.dim, "s": args.s}

    median_s, median_cpu, _, ref = measured(lambda: np.median(X, axis=0), nbytes, memory=False)
    loop_s, loop_cpu, _, D_loop = measured(lambda: pairwise_loop(X), nbytes, memory=False)
    figures |= {"np_median_s": median_s, "np_median_cpu_s": median_cpu,
                "pairwise_loop_s": loop_s, "pairwise_loop_cpu_s": loop_cpu}
    print(f"{'':32s} {'wall':>8s}   {'cpu':>8s}")
    print(f"baseline np.median(axis=0)       {median_s:8.3f} s {median_cpu:8.3f} s")
    print(f"baseline O(n^2) distance loop    {loop_s:8.3f} s {loop_cpu:8.3f} s")

    runs: list[tuple[str, dict]] = [(name, {"s": args.s} if uses_byzantine_count(name) else {})
                                    for name in AGGREGATORS]
    runs += [("coord-median", {"threads": 2}), ("bulyan", {"s": args.s, "threads": 2}),
             ("multi-krum", {"s": args.s_high}), ("bulyan", {"s": args.s_high})]
    for name, params in runs:
        extra = {k: v for k, v in params.items() if not (k == "s" and v == args.s)}
        label = name + ("[" + ",".join(f"{k}={v}" for k, v in extra.items()) + "]" if extra else "")
        seconds, cpu, copies, out = measured(lambda: aggregate(name, X, check_finite_input=False, **params),  # noqa: B023 (timed within this iteration)
                                             nbytes)
        figures |= {f"{label}_s": seconds, f"{label}_cpu_s": cpu, f"{label}_peak_copies": copies}
        note = ""
        if name == "coord-median":
            assert np.array_equal(out, ref), "coord-median differs from np.median"
            note = f"  {median_s / seconds:5.1f}x faster than np.median (cpu {median_cpu / cpu:4.1f}x)"
        if name in ("krum", "multi-krum"):
            note = f"  {loop_s / seconds:5.1f}x faster than the distance loop (cpu {loop_cpu / cpu:4.1f}x)"
        print(f"{label:32s} {seconds:8.3f} s {cpu:8.3f} s  peak {copies:4.2f} copies{note}")
    check_s, _ = timed(lambda: aggregate("mean", X))
    figures["finite_check_plus_mean_s"] = check_s
    figures["coord_median_speedup"] = median_s / figures["coord-median_s"]
    figures["coord_median_2threads_speedup"] = median_s / figures["coord-median[threads=2]_s"]
    figures["krum_speedup"] = loop_s / figures["krum_s"]
    figures["multi_krum_speedup"] = loop_s / figures["multi-krum_s"]
    figures["bulyan_over_multi_krum"] = figures["bulyan_s"] / figures["multi-krum_s"]
    figures["bulyan_2threads_over_multi_krum"] = figures["bulyan[threads=2]_s"] / figures["multi-krum_s"]
    figures["bulyan_over_multi_krum_cpu"] = figures["bulyan_cpu_s"] / figures["multi-krum_cpu_s"]
    high = f"[s={args.s_high}]"
    figures["bulyan_over_multi_krum_s_high"] = figures[f"bulyan{high}_s"] / figures[f"multi-krum{high}_s"]
    print(f"bulyan / multi-krum              {figures['bulyan_over_multi_krum']:8.2f}x "
          f"(two threads: {figures['bulyan_2threads_over_multi_krum']:.2f}x, cpu: "
          f"{figures['bulyan_over_multi_krum_cpu']:.2f}x; "
          f"s={args.s_high}: {figures['bulyan_over_multi_krum_s_high']:.2f}x)")
    print(f"mean with the finite check       {check_s:8.3f} s")

    del D_loop, ref
    vote = bench_vote(X, 3 * args.n, args.threads)
    figures |= vote
    print(f"vote of {vote['vote_replicas']} replicas: hash {vote['vote_hash_s']:.3f} s"
          f" + vote {vote['vote_only_s']:.4f} s = {vote['vote_gbps']:.2f} GB/s (BLAKE3 {args.threads} threads "
          f"{vote['hash_parallel_gbps']:.2f} GB/s, numpy read pass {vote['read_pass_gbps']:.2f} GB/s)")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
