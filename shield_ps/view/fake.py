"""A deterministic, synthetic run event stream (``docs/metrics.md``) for tests, demos and screenshots.

It is not a simulation of training: the loss decays, the accuracy rises, a few fixed workers are Byzantine and get
flagged, one worker is late now and then. Every figure is a function of ``seed`` and the step.
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterator

from shield_ps.view.state import PHASES


def fake_run(steps: int = 40, workers: int = 15, *, files: int = 25, eval_every: int = 10, seed: int = 0,
             byzantine: tuple[int, ...] = (3, 7), start_time: float = 1_700_000_000.0,
             step_s: float = 0.5, final: bool = True) -> Iterator[dict[str, Any]]:
    """Yield job, worker, step, eval and (if ``final``) summary events of a fake run of ``steps`` steps."""
    rng = random.Random(seed)
    byzantine = tuple(b for b in byzantine if b < workers)
    now = start_time
    yield {"kind": "job", "time": now, "scheme": "mols", "workers": workers, "files": files, "replication": 3,
           "files_per_worker": files * 3 // workers, "network": "LeNet", "dataset": "MNIST", "batch_size": 250,
           "aggregator": "coord-median", "attack": "alie", "byzantine": len(byzantine), "byzantine_gen": "worst",
           "total_steps": steps, "steps_per_epoch": max(steps // 4, 1), "start_step": 0, "seed": seed,
           "config_hash": "fake", "resumed": False}
    for w in range(workers):
        yield {"kind": "worker", "time": now, "step": 0, "worker": w, "state": "connected", "compute_s": None,
               "address": f"127.0.0.1:{40000 + w}"}
    best = corrupted_total = dropped_total = 0.0
    flagged_ever: set[int] = set()
    for step in range(steps):
        now += step_s * (0.9 + 0.2 * rng.random())
        late = (step * 7 + seed) % workers if step % 5 == 4 else None
        for w in range(workers):
            state = "late" if w == late else "done"
            yield {"kind": "worker", "time": now, "step": step, "worker": w, "state": state,
                   "compute_s": round(0.15 + 0.1 * rng.random(), 4), "address": f"127.0.0.1:{40000 + w}"}
        corrupted = rng.randint(0, 2)
        dropped = 1 if step % 7 == 3 else 0
        flagged = [b for b in byzantine if rng.random() < 0.8]
        flagged_ever.update(flagged)
        corrupted_total += corrupted
        dropped_total += dropped
        times = {"broadcast": 0.01 + 0.005 * rng.random(), "compute": 0.2 + 0.05 * rng.random(),
                 "gather": 0.05 + 0.02 * rng.random(), "vote": 0.001, "aggregate": 0.01 + 0.005 * rng.random(),
                 "update": 0.002}
        times = {k: round(v, 5) for k, v in times.items()}
        times["total"] = round(sum(times[p] for p in PHASES), 5)
        yield {"kind": "step", "time": now, "step": step, "epoch": step // max(steps // 4, 1),
               "lr": 0.01 * (0.5 if step >= steps // 2 else 1.0), "loss": round(2.3 * math.exp(-step / 15) + 0.05, 5),
               "files": files, "files_won": files - dropped, "files_dropped": dropped, "files_corrupted": corrupted,
               "flagged": flagged, "erased": [late] if late is not None else [], "bytes_in": 1_234_567,
               "bytes_out": 2_345_678, "times": times}
        if (step + 1) % eval_every == 0 or step == steps - 1:
            top1 = round(0.98 - 0.88 * math.exp(-(step + 1) / 12) - 0.01 * rng.random(), 4)
            best = max(best, top1)
            yield {"kind": "eval", "time": now, "step": step + 1, "top1": top1, "top5": min(1.0, top1 + 0.05),
                   "loss": round(2.3 * math.exp(-(step + 1) / 12) + 0.05, 4)}
    if final:
        yield {"kind": "summary", "time": now, "steps": steps, "wall_s": round(now - start_time, 3),
               "best_top1": best, "final_top1": top1 if steps else None, "files_corrupted": int(corrupted_total),
               "files_dropped": int(dropped_total), "flagged_workers": sorted(flagged_ever), "reason": "completed"}
