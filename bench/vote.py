"""Benchmark: the PS's CPU time per step for the exact digest vote against the sketch path with every file disputed.

For f files of d float32 (LeNet d = 431,080; ResNet-18 d = 11,173,962) and r = 3 replicas per file, one step of:

* exact: the vote on digests, then for every winning file the work the PS does on the fetched payload: BLAKE3 of its
  raw bytes (the check against the winning digest) and the NaN/Inf check;
* sketch: the same digest check and NaN/Inf check of the one payload fetched per file, plus the sketch vote on the
  r sketches each file's holders sent, and the recomputation of the fetched payloads' sketches under the step's seed
  (one pass over all of them, as the runtime does, and one file at a time, as a streaming fetch would) and the norm
  check (``check_payload``); and the common two-class case, where r' holders of each disputed file still share a
  digest (it wins exactly; the sketches only decide who is blamed), with no recomputation;
* median (split files today, issue 26): the sketch vote, then the digest and NaN/Inf checks of each of the r payloads
  of every file's group, their coordinate-wise median and each payload's distance to it (the outlier check); no
  recomputation unless a payload is an outlier.

Receiving the bytes is the same in both paths and is not counted. Times are process CPU seconds (all threads), the
best of ``--reps``; the machine is shared, so CPU seconds are the steadier figure. Ends with one JSON line holding
``sketch_vs_exact_cpu_lenet`` and ``sketch_vs_exact_cpu_resnet18`` (sketch CPU / exact CPU, batched recomputation).

    python bench/vote.py [--files 25] [--reps 2] [--skip-resnet]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import numpy as np

from byzantine.groups import median_into, outliers
from byzantine.sketch import (
    DEFAULT_PARAMS,
    SketchReply,
    check_payload,
    check_payloads,
    l2_norm,
    new_seed,
    sketch_many,
    vote_sketches,
)
from byzantine.vote import vote_digests
from wire.digest import digest_bytes

SIZES = {"lenet": 431_080, "resnet18": 11_173_962}
R = 3


def cpu_best(fn: Callable[[], object], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def _payload_checks(rows: np.ndarray, zeros: np.ndarray) -> None:
    for row in rows:
        digest_bytes(memoryview(row).cast("B"))
        np.isfinite(np.dot(row, zeros))


def run(name: str, d: int, f: int, reps: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((f, d), dtype=np.float32)
    zeros = np.zeros(d, np.float32)
    holders = [tuple((i + j) % (f + 2) for j in range(R)) for i in range(f)]
    digests = [{w: bytes([i % 256]) * 32 for w in ws} for i, ws in enumerate(holders)]
    seed = new_seed()
    honest = sketch_many(list(rows), seed)  # what the holders send (computed by the agents, not timed)
    norms = [l2_norm(row) for row in rows]
    replies = [{w: SketchReply(honest[i].copy(), norms[i]) for w in ws} for i, ws in enumerate(holders)]
    claimed = [replies[i][holders[i][0]] for i in range(f)]

    def exact() -> None:
        vote_digests(holders, digests, 2)
        _payload_checks(rows, zeros)

    def sketch_path(batched: bool) -> None:
        vote = vote_sketches(holders, replies, 1e-3, 2)
        assert len(vote.files_won) == f
        _payload_checks(rows, zeros)
        if batched:
            assert check_payloads(list(zip(rows, claimed, strict=False)), seed) == [None] * f
        else:
            for i in range(f):
                assert check_payload(rows[i], claimed[i], seed) is None

    def two_classes() -> None:  # every file disputed, but r' holders share a digest: no recomputation at the PS
        vote_sketches(holders, replies, 1e-3, 2)
        _payload_checks(rows, zeros)

    replicas = [rows, rows * np.float32(1 + 1e-7), rows * np.float32(1 - 1e-7)]  # three classes' payloads

    def median_path() -> None:
        vote_sketches(holders, replies, 1e-3, 2)
        out = np.empty(d, np.float32)
        for i in range(f):
            got = [replicas[j][i] for j in range(R)]
            for payload in got:
                _payload_checks(payload[None], zeros)
            median_into(got, [1] * R, out)
            assert outliers(got, out, 1e-3, DEFAULT_PARAMS.hiding()) == []

    exact_s = cpu_best(exact, reps)
    median_s = cpu_best(median_path, reps)
    majority_s = cpu_best(two_classes, reps)
    batched_s = cpu_best(lambda: sketch_path(True), reps)
    streamed_s = cpu_best(lambda: sketch_path(False), max(1, reps - 1))
    out = {f"exact_cpu_s_{name}": exact_s, f"sketch_cpu_s_{name}": batched_s,
           f"sketch_streamed_cpu_s_{name}": streamed_s,
           f"sketch_vs_exact_cpu_{name}": batched_s / exact_s,
           f"sketch_streamed_vs_exact_cpu_{name}": streamed_s / exact_s,
           f"sketch_majority_vs_exact_cpu_{name}": majority_s / exact_s,
           f"sketch_median_cpu_s_{name}": median_s, f"sketch_median_vs_exact_cpu_{name}": median_s / exact_s}
    print(f"{name:9s} d={d:>10,} f={f}: exact {exact_s * 1e3:8.1f} ms   sketch {batched_s * 1e3:8.1f} ms "
          f"({batched_s / exact_s:5.1f}x)   one file at a time {streamed_s * 1e3:8.1f} ms "
          f"({streamed_s / exact_s:5.1f}x)   with an exact sub-majority {majority_s * 1e3:8.1f} ms "
          f"({majority_s / exact_s:5.1f}x)   split files' group median {median_s * 1e3:8.1f} ms "
          f"({median_s / exact_s:5.1f}x)", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=25, help="files per step f (default 25: K=15, r=3 MOLS)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--skip-resnet", action="store_true", help="LeNet only (about 1 GB less memory)")
    args = parser.parse_args()
    p = DEFAULT_PARAMS
    print(f"sketch: k={p.rows} x c={p.width} float64 ({p.nbytes // 1024} KiB), hiding bound {p.hiding():.2f} x tol, "
          f"false accept <= {p.accept_p:g} per pair; every file disputed, r={R}")
    figures: dict[str, float | int] = {"files": args.files, "sketch_rows": p.rows, "sketch_width": p.width,
                                       "hiding_factor": p.hiding()}
    for name, d in SIZES.items():
        if name == "resnet18" and args.skip_resnet:
            continue
        figures.update(run(name, d, args.files, args.reps if name == "lenet" else max(1, args.reps - 1)))
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
