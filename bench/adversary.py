"""Each behaviour of the adversary zoo (docs/adversary.md) against a clean run of the same fleet, side by side.

Small in-process clusters (tests/byzantine_zoo.py: the PS and every agent in this process over real TCP on
127.0.0.1, LeNet on MNIST), Ramanujan Case 2 K=9 r=3 and MOLS K=15 r=3, ``--steps`` steps each. Fleets:

- ``one``: one determinism class, ``--vote auto``, coordinate median;
- ``two``: two classes, the odd workers running ``--adversary other-class:3e-7`` (the offset issue #26 measured
  between two CPU kernel settings of LeNet); ``two-alt`` has the even workers in the second class instead: the
  **clean spread** of a scheme is ||p(two) - p(two-alt)|| / ||p(two)||, how far two honest fleets that differ only
  in which machines compute alike end apart;
- ``exact``: one class, ``--vote exact``;
- ``drop``: one class, q = 3 with multi-krum (Ramanujan) or q = 4 with bulyan (MOLS), the issue's row 6, with
  ``--short-step lower-s`` (without it serve refuses these configurations at start: q silent agents could block
  every update).

Each scenario (issue #26's rows 1-8, then the relay and timing zoo) replaces some workers of its fleet by Byzantine
agents, the first of them favoured by the fetch order (or made a relay, or a relay's child) through the run's secret,
and is compared with its fleet's clean run: step time (median, and worst step) against the clean median (over the
fleet's clean runs before and after the scenarios; the two two-class fleets pooled), the
parameters' shift ||p - p_clean|| / ||p_clean||, whether the run failed (exit status not 0, a step missing, or no
update applied), the sketch vote's tolerance against the clean fleet's, and where the culprits were reported.

The last line is one JSON object with exactly these keys:

- ``worst_step_time_ratio``: the largest median step time of a scenario over its clean median (target <= 1.5);
- ``max_param_shift_vs_clean``: the largest parameter shift of a scenario in units of its scheme's clean spread
  (target <= 10), over the scenarios where the adversary holds no file's majority and drops nothing (the worst-case
  hiders win the c_max(q) files the guarantee allows them, and droppers change which files are aggregated; both
  are reported, not counted);
  (these two over the runs that did not fail: a failed run is counted in the next key, and its parameters, never or
  seldom updated, say nothing more);
- ``runs_failed``: scenarios whose run failed (target 0);
- ``tolerance_inflation``: the largest tolerance of a scenario over its clean fleet's (target <= 2).

    python bench/adversary.py [--quick] [--steps N] [--schemes rama,mols] [--only NAME,...]

``--quick``: Ramanujan only, 3 steps (about 40 small runs). Heavy: run it under ``nice``. The default is 8 steps: a
behaviour's one-off costs (the first step, which has no history yet; the step a silent agent is first made a relay)
show in the max column, and the median says what it costs a run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from byzantine.aggregators import default_byzantine_count  # noqa: E402
from byzantine.placement import build_placement  # noqa: E402
from byzantine.vote import VoteMode  # noqa: E402
from byzantine.worst_case import worst_case  # noqa: E402
from shield_agent.adversary import parse_adversaries  # noqa: E402
from shield_ps.config import ServeConfig  # noqa: E402
from tests.byzantine_zoo import (  # noqa: E402
    RunResult,
    run_cluster,
    secret_favouring,
    secret_making_relay,
    secret_relaying_to,
    zoo_config,
)

OTHER = "other-class:3e-7"
SCHEMES: dict[str, dict[str, Any]] = {
    "rama": {"scheme": "rama_two", "workers": 9, "replication": 3, "rama_m": 3},
    "mols": {"scheme": "mols", "workers": 15, "replication": 3, "rama_m": None},
}
#: the drop fleet: q and the aggregator whose n >= ... precondition q droppers can break (issue #26, row 6). serve
#: refuses these configurations at start since issue 26 (q silent agents could block every update), unless the
#: operator accepts that risk with --short-step lower-s, as here: then s is lowered soundly for the dropped files
#: that provably had a Byzantine majority, and only then by the unsound fallback
DROP = {"rama": {"byzantine": 3, "aggregator": "multi-krum", "short_step": "lower-s"},
        "mols": {"byzantine": 4, "aggregator": "bulyan", "short_step": "lower-s"}}
CATEGORIES = ("lying", "outvoted", "slow", "erased", "relay")


@dataclass(frozen=True)
class Scenario:
    """``culprits(K, placement)`` -> worker -> its ``--adversary`` values, in fleet ``fleet``; the run's secret
    favours the first culprit as ``secret`` says (asked first for a file, a relay, a relay's child)."""

    name: str
    row: str
    fleet: str
    culprits: Callable[[int, Any], dict[int, str]]
    secret: str = "favour"
    #: counted in max_param_shift_vs_clean: False where the guarantee allows the adversary to change the rows (the
    #: c_max(q) files where it holds r' copies, the files co-holders drop), so its shift says nothing of the seams
    shift_counts: bool = True


def last(spec: str) -> Callable[[int, Any], dict[int, str]]:
    return lambda k, placement: {k - 1: spec}


def worst(q: int, spec: str) -> Callable[[int, Any], dict[int, str]]:
    """The worst-case set of q workers (the most files with a Byzantine majority), each running ``spec``."""
    return lambda k, placement: {w: spec for w in worst_case(placement, q).worst_set}


def minority(q: int, spec: str) -> Callable[[int, Any], dict[int, str]]:
    """q workers no two of which hold one file (a minority in every file they hold), each running ``spec``."""
    def pick(k: int, placement: Any) -> dict[int, str]:
        for chosen in itertools.combinations(range(k), q):
            if all(sum(w in holders for w in chosen) < 2 for holders in placement.file_workers):
                return {w: spec for w in chosen}
        raise SystemExit(f"no {q} workers of this placement are a minority in every file")
    return pick


SCENARIOS = [
    Scenario("fake-probe", "1", "two", last("fake-probe")),
    Scenario("stealth-probe", "1", "two", lambda k, p: {0: "stealth-probe"}),  # worker 0 stands for its class
    Scenario("3 hiders + fake-probe", "2", "two", minority(3, "hider:0.04 fake-probe")),
    Scenario("3 hiders (worst set)", "2", "two", worst(3, "hider:0.04 fake-probe"), shift_counts=False),
    Scenario("silent-disputer", "3", "one", last("silent-disputer")),
    # in a two-class fleet its files whose other holders are of different classes have no exact winner: they wait
    # for what only it can give (its digest, its sketch)
    Scenario("silent-disputer (two classes)", "3", "two", last("silent-disputer")),
    Scenario("silent-digests (two classes)", "timing", "two", last("silent-digests")),
    Scenario("delayed-digests (two classes)", "timing", "two", last("delayed-digests")),
    Scenario("grinding-centre", "4", "two", last("grinding-centre")),
    Scenario("sketch-liar centre", "5", "two", last("sketch-liar:0.01,centre")),
    Scenario("sketch-liar non-centre", "5", "two", last("sketch-liar:0.01,non-centre")),
    Scenario("droppers (q-1 co-holders)", "6", "drop", lambda k, p: {}, shift_counts=False),  # see _droppers
    Scenario("fake-probe (--vote exact)", "7", "exact", last("fake-probe")),
    Scenario("relay-staller", "8", "one", last("relay-staller"), secret="relay"),
    Scenario("relay-corrupter", "relay", "one", last("relay-corrupter"), secret="relay"),
    Scenario("relay-accuser", "relay", "one", last("relay-accuser"), secret="accused"),
    Scenario("forger", "vote", "one", last("forger")),
    Scenario("scale:-1", "vote", "one", last("scale:-1")),
    Scenario("deviator", "vote", "two", last("deviator:0.01")),
    Scenario("dropper (one)", "vote", "one", last("dropper")),
] + [Scenario(name, "timing", "one", last(name)) for name in (
    "trickle", "slow-payload", "silent-fetch", "delayed-fetch", "slow-step-reader", "silent-digests",
    "reconnect-every-step", "flood", "wrong-length", "replay")]


def _droppers(scheme: str, placement: Any) -> dict[int, str]:
    """Row 6: two droppers (Ramanujan, q = 3) or four (MOLS, q = 4) that co-hold files, as the issue measured."""
    q = 2 if scheme == "rama" else 4
    return {w: "dropper" for w in worst_case(placement, q).worst_set}


def fleet_slots(fleet: str, k: int) -> list[str | None]:
    if fleet == "two":
        return [OTHER if w % 2 else None for w in range(k)]
    if fleet == "two-alt":
        return [None if w % 2 else OTHER for w in range(k)]
    return [None] * k


def fleet_changes(fleet: str, scheme: str) -> dict[str, Any]:
    if fleet == "exact":
        return {"vote": VoteMode.EXACT}
    if fleet == "drop":
        return dict(DROP[scheme])
    return {}


@dataclass
class Outcome:
    """What one run showed."""

    exit_code: int
    steps: list[dict[str, Any]]
    params: np.ndarray | None
    tolerance: float | None
    wall_s: float

    @classmethod
    def of(cls, result: RunResult, wall: float) -> Outcome:
        classes = result.of("classes")
        return cls(result.exit_code, result.of("step"), result.params,
                   classes[-1]["tolerance"] if classes else None, wall)

    @property
    def median_s(self) -> float | None:
        totals = [e["times"]["total"] for e in self.steps]
        return statistics.median(totals) if totals else None

    @property
    def max_s(self) -> float | None:
        return max((e["times"]["total"] for e in self.steps), default=None)

    def failed(self, steps: int) -> bool:
        applied = [e for e in self.steps if e["aggregation"]["action"] != "skip"]
        return self.exit_code != 0 or len(self.steps) < steps or not applied


def _run(root: Path, label: str, slots: list[str | None], secret: bytes, changes: dict[str, Any]) -> Outcome:
    started = time.monotonic()
    result = run_cluster(root / label.replace(" ", "_").replace(",", "").replace(":", "_"), slots=slots,
                         secret=secret, require_checkpoint=False, **changes)
    outcome = Outcome.of(result, time.monotonic() - started)
    result.daemon = None
    return outcome


def _shift(params: np.ndarray | None, clean: np.ndarray | None) -> float | None:
    if params is None or clean is None:
        return None
    return float(np.linalg.norm(params.astype(np.float64) - clean) / np.linalg.norm(clean.astype(np.float64)))


def _secret(kind: str, config: Any, worker: int, steps: int) -> bytes:
    if kind == "relay":
        return secret_making_relay(config, worker, steps)
    if kind == "accused":
        return secret_relaying_to(config, worker)[0]
    return secret_favouring(config, worker)


def bench_scheme(scheme: str, steps: int, only: set[str] | None, root: Path, log: Callable[[str], None],
                 gather_timeout: float = 60.0) -> tuple[list[dict[str, Any]], float]:
    """Every scenario of ``scheme`` against its fleet's clean run; the rows and the scheme's clean spread."""
    # the PS's own hedge floor (the test harness's is 1 s), so the step-time ratios are those of a default serve
    base = {**SCHEMES[scheme], "max_steps": steps, "gather_timeout": gather_timeout,
            "hedge_floor": ServeConfig.hedge_floor}
    config = zoo_config(Path("unused"), **base)
    k = config.workers
    placement = build_placement(config.scheme, k, config.replication, config.rama_m)
    neutral = secret_favouring(config, k - 1)
    scenarios = [s for s in SCENARIOS if only is None or s.name in only]
    fleets = sorted({s.fleet for s in scenarios} | {"two", "two-alt"})
    clean: dict[str, Outcome] = {}
    for fleet in fleets:
        changes = {**base, **fleet_changes(fleet, scheme)}
        clean[fleet] = _run(root / scheme, f"clean-{fleet}", fleet_slots(fleet, k), neutral, changes)
        honest = {c: sum(len(e[c]) for e in clean[fleet].steps) for c in CATEGORIES}
        log(f"{scheme}: clean {fleet}: median step {_fmt(clean[fleet].median_s, '.2f')} s, exit "
            f"{clean[fleet].exit_code}, tolerance {clean[fleet].tolerance}, workers reported {honest}")
    spread = _shift(clean["two-alt"].params, clean["two"].params) or 0.0
    rows = []
    for scenario in scenarios:
        culprits = _droppers(scheme, placement) if scenario.row == "6" else scenario.culprits(k, placement)
        slots = fleet_slots(scenario.fleet, k)
        for worker, spec in culprits.items():
            parse_adversaries(spec.split())
            slots[worker] = spec
        first = min(culprits)
        changes = {**base, **fleet_changes(scenario.fleet, scheme)}
        if "byzantine" not in changes:  # q as an operator would set it: the attestation quorum is max(r', q + 1),
            # and --byzantine-gen fixed names the agents so that files_corrupted counts what they could set
            changes.update(byzantine=len(culprits), byzantine_gen="fixed", fixed_byzantine=tuple(sorted(culprits)))
        secret = _secret(scenario.secret, zoo_config(Path("unused"), **changes), first, steps)
        got = _run(root / scheme, scenario.name, slots, secret, changes)
        ref = clean[scenario.fleet]
        found = {c: sum(1 for e in got.steps for w in culprits if w in e[c]) for c in CATEGORIES}
        honest_blamed = {c: sum(1 for e in got.steps for w in e[c] if w not in culprits) for c in CATEGORIES}
        row = {
            "scheme": scheme, "scenario": scenario.name, "row": scenario.row, "fleet": scenario.fleet,
            "shift_counts": scenario.shift_counts,
            "culprits": sorted(culprits), "steps": len(got.steps), "exit": got.exit_code,
            "failed": got.failed(steps),
            "median_s": got.median_s, "max_s": got.max_s,
            "shift": _shift(got.params, ref.params),
            "tolerance": got.tolerance, "clean_tolerance": ref.tolerance,
            "inflation": got.tolerance / ref.tolerance if got.tolerance and ref.tolerance else None,
            "corrupted": sum(e["files_corrupted"] for e in got.steps),
            "corrupted_max_step": max((e["files_corrupted"] for e in got.steps), default=0),
            "c_max": default_byzantine_count(placement, len(culprits)),
            "dropped": sum(e["files_dropped"] for e in got.steps),
            "skipped": sum(1 for e in got.steps if e["aggregation"]["action"] == "skip"),
            "hedges": sum(e["hedges"] for e in got.steps),
            "culprit_in": {c: n for c, n in found.items() if n},
            "honest_blamed": {c: n for c, n in honest_blamed.items() if n},
        }
        rows.append(row)
    baseline = _baselines(root / scheme, clean, fleets, neutral, base, scheme, k, log)
    for row in rows:
        ref_s = baseline.get(row["fleet"])
        row["clean_median_s"] = ref_s
        row["ratio"] = row["median_s"] / ref_s if row["median_s"] and ref_s else None
        row["max_ratio"] = row["max_s"] / ref_s if row["max_s"] and ref_s else None
        log(_line(row, spread))
    return rows, spread


def _baselines(root: Path, clean: dict[str, Outcome], fleets: list[str], neutral: bytes, base: dict[str, Any],
               scheme: str, k: int, log: Callable[[str], None]) -> dict[str, float]:
    """Each fleet's clean median step, over its clean run before the scenarios and another after them (the load of
    a shared machine drifts over a bench's quarter hour; one clean run was 1.6x another of the same fleet), the
    two two-class fleets pooled (they differ only in which workers are of which class)."""
    totals: dict[str, list[float]] = {}
    for fleet in fleets:
        again = _run(root, f"clean-{fleet}-after", fleet_slots(fleet, k), neutral,
                     {**base, **fleet_changes(fleet, scheme)})
        totals[fleet] = [e["times"]["total"] for run in (clean[fleet], again) for e in run.steps]
    pooled = totals.get("two", []) + totals.get("two-alt", [])
    baseline = {fleet: statistics.median(pooled if fleet in ("two", "two-alt") else got)
                for fleet, got in totals.items() if got}
    for fleet, seconds in sorted(baseline.items()):
        log(f"{scheme}: clean {fleet}: baseline median step {seconds:.2f} s over {len(totals[fleet])} steps "
            "(before and after the scenarios)")
    return baseline


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0]) if spec[0].isdigit() else 0
    return f"{'-':>{width}}" if value is None else format(value, spec)


def _line(row: dict[str, Any], spread: float) -> str:
    units = row["shift"] / spread if row["shift"] is not None and spread else None
    return (f"{row['scheme']:<5}{row['row']:<7}{row['scenario']:<28}{_fmt(row['ratio'], '6.2f')}"
            f"{_fmt(row['max_ratio'], '7.2f')}{_fmt(row['shift'], '10.2e')}{_fmt(units, '9.1f')}"
            f"{_fmt(row['inflation'], '10.3g')}  {'FAILED' if row['failed'] else 'ok':<7}"
            f"{row['steps']:>2} st {row['skipped']} skip {row['corrupted_max_step']}/{row['c_max']} corr/step "
            f"{row['dropped']} drop "
            f"{row['hedges']} hedge culprit {row['culprit_in']} honest {row['honest_blamed']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Ramanujan only, 3 steps")
    parser.add_argument("--steps", type=int, help="steps per run (default 8; 3 with --quick)")
    parser.add_argument("--schemes", default=None, help="comma-separated of rama,mols (default both; rama --quick)")
    parser.add_argument("--only", default=None, help="comma-separated scenario names (default all)")
    parser.add_argument("--gather-timeout", type=float, default=60.0,
                        help="the PS's gather deadline (default 60 s: generous, so that no honest agent of a loaded "
                        "two-class fleet is erased and the clean spread is the classes', not the machine's)")
    parser.add_argument("--json-out", help="also write the rows to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    steps = args.steps or (3 if args.quick else 8)
    schemes = (args.schemes or ("rama" if args.quick else "rama,mols")).split(",")
    if not set(schemes) <= set(SCHEMES) or steps < 1:
        parser.error(f"--schemes takes {', '.join(SCHEMES)}; --steps a positive integer")
    only = set(args.only.split(",")) if args.only else None
    if only is not None and only - {s.name for s in SCENARIOS}:
        parser.error(f"--only takes scenario names: {', '.join(s.name for s in SCENARIOS)}")
    load_start = os.getloadavg()[0]
    started = time.monotonic()
    print(f"{'':<5}{'row':<7}{'scenario':<28}{'ratio':>6}{'max':>7}{'shift':>10}{'/spread':>9}{'tol x':>10}  "
          "outcome", flush=True)
    rows, spreads = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in schemes:
            got, spreads[scheme] = bench_scheme(scheme, steps, only, Path(tmp), lambda s: print(s, flush=True),
                                                args.gather_timeout)
            rows.extend(got)
    for scheme, spread in spreads.items():
        print(f"{scheme}: clean spread (two honest two-class fleets, ||p - p'|| / ||p||) = {spread:.3e}; "
              f"target shift <= 10 x that = {10 * spread:.3e}")
    print(f"load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
          f"{time.monotonic() - started:.0f} s in all")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"rows": rows, "spreads": spreads}, indent=1))
    ran = [r for r in rows if not r["failed"]]
    units = [r["shift"] / spreads[r["scheme"]] for r in ran
             if r["shift_counts"] and r["shift"] is not None and spreads[r["scheme"]]]
    print(json.dumps({
        "worst_step_time_ratio": round(max((r["ratio"] for r in ran if r["ratio"] is not None), default=0.0), 2),
        "max_param_shift_vs_clean": round(max(units, default=0.0), 1),
        "runs_failed": sum(r["failed"] for r in rows),
        "tolerance_inflation": round(max((r["inflation"] for r in rows if r["inflation"] is not None), default=1.0),
                                     1),
    }))


if __name__ == "__main__":
    main()
