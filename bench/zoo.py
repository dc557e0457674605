"""Step time under each Byzantine timing behaviour, against a clean run measured in the same script.

Runs the in-process cluster of the liveness tests (Ramanujan Case 2, K = 9, r = 3, LeNet on MNIST; the PS and all
agents in this process over real TCP on 127.0.0.1) once clean and once per timing behaviour of the adversary zoo
(shield_agent.adversary, docs/adversary.md) with the culprit as worker 8, and prints per behaviour the median and
worst step time, their ratio to the clean run's median, and where the culprit was reported. Ends with one JSON line.

    python bench/zoo.py [--steps 8] [--gather-timeout 8] [--behaviours trickle,...]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shield_agent.adversary import parse_adversary  # noqa: E402
from shield_ps.config import ServeConfig  # noqa: E402
from tests.byzantine_zoo import run_cluster, secret_favouring, zoo_config  # noqa: E402

BEHAVIOURS = ["trickle", "slow-payload", "silent-fetch", "delayed-fetch", "slow-step-reader", "silent-digests",
              "reconnect-every-step", "flood", "wrong-length", "replay"]
CULPRIT = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--gather-timeout", type=float, default=8.0)
    parser.add_argument("--hedge-floor", type=float, default=ServeConfig.hedge_floor,
                        help="default: the PS's own default")
    parser.add_argument("--behaviours", default=",".join(BEHAVIOURS),
                        help="comma-separated Byzantine behaviours to time (default: all)")
    args = parser.parse_args()
    chosen = args.behaviours.split(",")
    if not set(chosen) <= set(BEHAVIOURS):
        parser.error(f"--behaviours: choose from {', '.join(BEHAVIOURS)}")
    logging.basicConfig(level=logging.ERROR)
    changes = {"gather_timeout": args.gather_timeout, "max_steps": args.steps, "hedge_floor": args.hedge_floor}
    secret = secret_favouring(zoo_config(Path("unused"), **changes), CULPRIT)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        clean = run_cluster(Path(tmp) / "clean", slots=[None] * 9, secret=secret, **changes)
        base = statistics.median(e["times"]["total"] for e in clean.of("step"))
        for name in chosen:
            parse_adversary(name)
            result = run_cluster(Path(tmp) / name, zoo=name, secret=secret, **changes)
            totals = [e["times"]["total"] for e in result.of("step")]
            found = {c: sum(CULPRIT in e[c] for e in result.of("step")) for c in ("lying", "outvoted", "slow",
                                                                                  "erased")}
            rows[name] = {"median_s": round(statistics.median(totals), 3), "max_s": round(max(totals), 3),
                          "ratio": round(statistics.median(totals) / base, 2), "steps": len(totals),
                          "exit": result.exit_code, "same_params": bool((result.params == clean.params).all()),
                          "culprit": {c: n for c, n in found.items() if n}}
    print(f"clean: median step {base:.3f}s over {len(clean.of('step'))} steps")
    print(f"{'behaviour':<22}{'median s':>9}{'max s':>8}{'ratio':>7}  {'same params':<12}culprit reported as (steps)")
    for name, row in rows.items():
        print(f"{name:<22}{row['median_s']:>9.3f}{row['max_s']:>8.3f}{row['ratio']:>7.2f}  "
              f"{str(row['same_params']):<12}{row['culprit']}")
    print(json.dumps({"clean_median_step_s": round(base, 3),
                      "zoo_step_time_ratio": {k: v["ratio"] for k, v in rows.items()},
                      "zoo_max_step_s": {k: v["max_s"] for k, v in rows.items()},
                      "zoo_same_params": all(v["same_params"] for v in rows.values())}))


if __name__ == "__main__":
    main()
