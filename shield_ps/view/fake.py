"""A deterministic, synthetic run event stream (``docs/metrics.md``) for tests, demos and screenshots.

It is not a simulation of training: the loss decays, the accuracy rises, a few fixed workers are Byzantine and are
mostly outvoted; the first of them forges a payload now and then (proven lying); an honest worker is outvoted once
in a while (in a file the adversary won: outvoted, never a liar); one worker is late now and then (slow and erased);
one step skips its update; connections are refused before authentication twice. With ``codecs``, the steps also
report the codecs used (raw everywhere, one link switched to LZ4 from time to time). Every figure is a function of
``seed`` and the step.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from shield_ps.phases.names import TOTAL, Phase
from shield_ps.view.state import CATEGORIES, PHASES

#: a step whose files were too few to aggregate (``aggregation.action`` = ``skip``), as the step index mod this
SKIP_EVERY = 11
#: with ``codecs``, a step in which one worker's links use LZ4 (both directions), as the step index mod this
LZ4_EVERY = 3


def _codecs(step: int, workers: int, won: int) -> dict[str, dict[str, int]]:
    """A step's ``codecs`` (docs/metrics.md): raw on every link but one every LZ4_EVERY steps."""
    switched = int(step % LZ4_EVERY == LZ4_EVERY - 1 and workers > 1)
    fetched = min(switched, won)
    out = {"none": workers - switched, "lz4": switched}
    into = {"none": won - fetched, "lz4": fetched}
    return {"out": {k: v for k, v in out.items() if v}, "in": {k: v for k, v in into.items() if v}}


def _outvoted(rng: random.Random, step: int, workers: int, byzantine: tuple[int, ...], lying: list[int],
              corrupted: int) -> list[int]:
    """Most Byzantine workers not caught lying; now and then an honest one outvoted in a file the adversary won."""
    outvoted = [b for b in byzantine if b not in lying and rng.random() < 0.8]
    if corrupted and step % 4 == 1:
        honest = [w for w in range(workers) if w not in byzantine]
        outvoted = sorted({*outvoted, honest[step % len(honest)]}) if honest else outvoted
    return outvoted


def _times(rng: random.Random) -> dict[str, float]:
    """A step's phase seconds (the digest gather longest, as on a real run) and their total."""
    seconds = {Phase.BROADCAST: 0.01 + 0.005 * rng.random(), Phase.DIGEST_GATHER: 0.2 + 0.05 * rng.random(),
               Phase.PAYLOAD_FETCH: 0.05 + 0.02 * rng.random(), Phase.VOTE: 0.001,
               Phase.AGGREGATE: 0.01 + 0.005 * rng.random(), Phase.UPDATE: 0.002}
    times = {phase.value: round(v, 5) for phase, v in seconds.items()}
    times[TOTAL] = round(sum(times[p] for p in PHASES), 5)
    return times


def _step_event(rng: random.Random, step: int, steps: int, workers: int, files: int, seed: int,
                byzantine: tuple[int, ...], now: float, refused: int, codecs: bool = False) -> dict[str, Any]:
    late = (step * 7 + seed) % workers if step % 5 == 4 else None
    skip = step % SKIP_EVERY == SKIP_EVERY - 1
    dropped = files - 2 if skip else 1 if step % 7 == 3 else 0
    corrupted = 0 if skip else rng.randint(0, 2)
    lying = [byzantine[0]] if byzantine and step % 6 == 5 else []
    outvoted = _outvoted(rng, step, workers, byzantine, lying, corrupted)
    times = _times(rng)
    aggregation = ({"action": "skip", "s": None, "reason": "2 files survived; the aggregator needs 3"} if skip
                   else {"action": "aggregate", "s": len(byzantine), "reason": None})
    event = {"kind": "step", "time": now, "step": step, "epoch": step // max(steps // 4, 1),
            "lr": 0.01 * (0.5 if step >= steps // 2 else 1.0), "loss": round(2.3 * math.exp(-step / 15) + 0.05, 5),
            "files": files, "files_won": files - dropped, "files_dropped": dropped, "files_corrupted": corrupted,
            "lying": lying, "outvoted": outvoted, "slow": [late] if late is not None else [],
            "erased": [late] if late is not None else [], "aggregation": aggregation, "hedges": int(step % 3 == 2),
            "refused": refused, "bytes_in": 1_234_567, "bytes_out": 2_345_678, "times": times}
    if codecs:
        event["codecs"] = _codecs(step, workers, files - dropped)
    return event


def fake_run(steps: int = 40, workers: int = 15, *, files: int = 25, eval_every: int = 10, seed: int = 0,
             byzantine: tuple[int, ...] = (3, 7), start_time: float = 1_700_000_000.0,
             step_s: float = 0.5, final: bool = True, codecs: bool = False) -> Iterator[dict[str, Any]]:
    """Yield job, worker, step, eval, checkpoint and (if ``final``) summary events of a fake run of ``steps``
    steps; the summary's totals are those of the steps."""
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
    best = 0.0
    top1: float | None = None
    totals = {"files_corrupted": 0, "files_dropped": 0, "steps_skipped": 0, "steps_lowered_s": 0}
    counts: dict[str, dict[int, int]] = {name: {} for name in CATEGORIES}
    last_checkpoint = None
    for step in range(steps):
        now += step_s * (0.9 + 0.2 * rng.random())
        late = (step * 7 + seed) % workers if step % 5 == 4 else None
        for w in range(workers):
            state = "late" if w == late else "done"
            yield {"kind": "worker", "time": now, "step": step, "worker": w, "state": state,
                   "compute_s": round(0.15 + 0.1 * rng.random(), 4), "address": f"127.0.0.1:{40000 + w}"}
        event = _step_event(rng, step, steps, workers, files, seed, byzantine, now, refused=2 * (step >= 3),
                            codecs=codecs)
        totals["files_corrupted"] += event["files_corrupted"]
        totals["files_dropped"] += event["files_dropped"]
        totals["steps_skipped"] += event["aggregation"]["action"] == "skip"
        for name in CATEGORIES:
            for w in event.get(name, ()):
                counts[name][w] = counts[name].get(w, 0) + 1
        yield event
        if (step + 1) % eval_every == 0 or step == steps - 1:
            top1 = round(0.98 - 0.88 * math.exp(-(step + 1) / 12) - 0.01 * rng.random(), 4)
            best = max(best, top1)
            yield {"kind": "eval", "time": now, "step": step + 1, "top1": top1, "top5": min(1.0, top1 + 0.05),
                   "loss": round(2.3 * math.exp(-(step + 1) / 12) + 0.05, 4)}
            last_checkpoint = step + 1
            yield {"kind": "checkpoint", "time": now, "step": step + 1, "ok": True,
                   "path": f"run/checkpoints/step-{step + 1:08d}.npz"}
    if final:
        yield {"kind": "summary", "time": now, "steps": steps, "wall_s": round(now - start_time, 3),
               "best_top1": best, "final_top1": top1, "reason": "completed", **totals,
               **{f"{name}_workers": {str(w): n for w, n in sorted(c.items())} for name, c in counts.items()},
               "refused": 2 if steps > 3 else 0, "checkpoint_errors": [], "last_checkpoint": last_checkpoint,
               "metrics_complete": True}
