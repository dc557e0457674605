"""Benchmark: exact worst case c_max(q) by branch and bound against brute-force enumeration, measured in this run.

Configurations (every q the issue asks for): MOLS (K=15, r=3) q=1..7, MOLS (K=21, r=3) q=1..10, Ramanujan case 2
(K=25, r=5) q=1..12, MOLS (K=35, r=5) q=1..13. q runs in ascending order as in ``shield-ps analyze`` (each q reuses
the exact answers of smaller q as bounds); the largest q of each configuration is also timed cold (cache cleared).
Brute force (numpy over every C(K, q) set) runs where C(K, q) <= --brute-max; the ratio is brute-force time over
ours, and the two must agree on c_max and on the lexicographically smallest optimal set. Beyond that, the brute-force
time is estimated from its measured rate (sets per second) and printed as an estimate. The last line is one JSON
object.

    python bench/analysis.py [--brute-max 1500000] [--configs mols_K15_r3,...]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)  # this file is bench/analysis.py: import the package

import numpy as np  # noqa: E402

from byzantine.placement import Placement, build_placement  # noqa: E402
from byzantine.worst_case import clear_cache, worst_case  # noqa: E402

CONFIGS = [("mols_K15_r3", "mols", 15, 3, 7, 10.0), ("mols_K21_r3", "mols", 21, 3, 10, 10.0),
           ("rama_two_K25_r5", "rama_two", 25, 5, 12, 10.0), ("mols_K35_r5", "mols", 35, 5, 13, 30.0)]
CHUNK = 200_000


def brute_force(p: Placement, q: int) -> tuple[int, tuple[int, ...]]:
    """Every q-set in lexicographic order, in chunks; the best value and the first set reaching it."""
    H = p.biadjacency().astype(np.int16)
    combos = itertools.combinations(range(p.K), q)
    best, best_set = -1, ()
    while True:
        flat = np.fromiter(itertools.chain.from_iterable(itertools.islice(combos, CHUNK)), dtype=np.int64)
        if flat.size == 0:
            return best, best_set
        block = flat.reshape(-1, q)
        counts = H[block[:, 0]].copy()
        for column in range(1, q):
            counts += H[block[:, column]]
        values = (counts >= p.r_prime).sum(axis=1)
        i = int(np.argmax(values))
        if values[i] > best:
            best, best_set = int(values[i]), tuple(int(w) for w in block[i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brute-max", type=int, default=1_500_000, help="largest C(K, q) to brute-force")
    parser.add_argument("--configs", default=",".join(c[0] for c in CONFIGS),
                        help="comma-separated configurations to run (default: all of them)")
    args = parser.parse_args()
    chosen = args.configs.split(",")
    unknown = sorted(set(chosen) - {c[0] for c in CONFIGS})
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)} (choose from {', '.join(c[0] for c in CONFIGS)})")
    load_start = os.getloadavg()[0]
    print(f"load average at start: {load_start:.2f} ({os.cpu_count()} cores)")
    figures: dict = {"load_start": round(load_start, 2), "configs": {}}
    all_within = True
    for name, scheme, K, r, q_max, limit in (c for c in CONFIGS if c[0] in chosen):
        p = build_placement(scheme, K, r)
        clear_cache()
        table: dict[str, int] = {}
        times: dict[str, float] = {}
        brute_ratio: dict[str, float] = {}
        rate = 0.0
        for q in range(1, q_max + 1):
            started = time.perf_counter()
            wc = worst_case(p, q)
            ours = time.perf_counter() - started
            assert wc.exact
            table[str(q)], times[str(q)] = wc.c_max, round(ours, 4)
            line = f"{name} q={q:2d}: c_max={wc.c_max:2d} in {ours:7.3f} s  set={list(wc.worst_set)}"
            if math.comb(K, q) <= args.brute_max:
                started = time.perf_counter()
                brute = brute_force(p, q)
                brute_s = time.perf_counter() - started
                if brute != (wc.c_max, wc.worst_set):
                    raise SystemExit(f"MISMATCH {name} q={q}: brute force {brute}, ours {wc}")
                brute_ratio[str(q)] = round(brute_s / ours, 2)
                rate = max(rate, math.comb(K, q) / brute_s)
                line += f"  brute force {brute_s:7.3f} s ({brute_s / ours:8.1f}x ours, agrees)"
            elif rate:
                line += f"  brute force est. {math.comb(K, q) / rate:9.0f} s at {rate:.2g} sets/s (not run)"
            print(line, flush=True)
        clear_cache()
        started = time.perf_counter()
        cold = worst_case(p, q_max)
        cold_s = time.perf_counter() - started
        assert cold.c_max == table[str(q_max)]
        within = max(times.values()) < limit
        all_within &= within
        print(f"{name}: slowest q {max(times.values()):.3f} s (limit {limit:g} s per q); q={q_max} cold "
              f"(all smaller q included) {cold_s:.3f} s")
        largest = max(brute_ratio, key=int)
        print(f"{name}: brute force / ours at the largest brute-forced q={largest}: {brute_ratio[largest]}x")
        figures["configs"][name] = {"c_max": table, "seconds": times, "max_seconds": max(times.values()),
                                    "cold_max_q_seconds": round(cold_s, 4), "within_limit": within,
                                    "brute_force_ratio": brute_ratio,
                                    "brute_force_ratio_largest_q": brute_ratio[largest],
                                    "brute_force_est_max_q_seconds": round(math.comb(K, q_max) / rate, 1)}
    load_end = os.getloadavg()[0]
    print(f"load average at end: {load_end:.2f}")
    figures["load_end"] = round(load_end, 2)
    figures["all_within_limits"] = all_within
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
