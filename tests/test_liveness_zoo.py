"""Liveness under Byzantine timing: each timing behaviour of the adversary zoo (shield_agent.adversary, run by
tests/byzantine_zoo.py) against a small real cluster.

Ramanujan Case 2 with K = 9, r = 3 (each file has three holders, r' = 2), LeNet on MNIST, 4 steps, the PS and every
agent in this process over real TCP on 127.0.0.1. For each behaviour: the run completes every step, no step takes
longer than its configured deadlines allow (a generous bound computed from them), the culprit (worker 8) lands in
the right category and honest workers are never called liars, and the final parameters equal a clean run's (with
r = 3 a single misbehaving holder never changes a winner), which also equal those of a run without worker 8.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shield_ps.phases.deadlines import Deadlines
from tests.byzantine_zoo import RunResult, run_cluster, secret_favouring, zoo_config
from tests.runtime_helpers import MNIST_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="local MNIST data missing"),
]

CULPRIT = 8
STEPS = 4
#: behaviour -> (the category the culprit must be found in, whether it is equivalent to absence)
EXPECTED = {
    "trickle": ("slow", False),
    "slow-payload": ("slow", False),
    "silent-fetch": ("slow", False),
    "delayed-fetch": ("slow", False),
    "slow-step-reader": ("slow", True),
    "reconnect-every-step": ("erased", True),
    "silent-digests": ("slow", True),
    "flood": ("lying", True),
    "wrong-length": ("lying", False),
    "replay": ("lying", False),
}
CHANGES: dict[str, Any] = {"gather_timeout": 8.0}


def _secret() -> bytes:
    return secret_favouring(zoo_config(Path("unused"), **CHANGES), CULPRIT)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return run_cluster(tmp_path_factory.mktemp("clean"), slots=[None] * 9, secret=_secret(), **CHANGES)


@pytest.fixture(scope="module")
def absent(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """Worker 8 never joins (the PS starts without it after a short join deadline)."""
    return run_cluster(tmp_path_factory.mktemp("absent"), slots=[None] * 8, secret=_secret(), join_timeout=3.0,
                       **CHANGES)


def _step_bound(config_changes: dict[str, Any]) -> float:
    """What the deadlines allow one step: the broadcast's transfer, the gather, every holder of a file asked in turn,
    and a generous minute for the PS's own work on a loaded 2-core machine."""
    config = zoo_config(Path("unused"), **config_changes)
    deadlines = Deadlines.from_config(config)
    d4 = 431_080 * 4
    return deadlines.transfer(d4) + deadlines.gather + deadlines.worst_fetch(d4, config.replication) + 60.0


def test_clean_and_absent_runs_agree(clean: RunResult, absent: RunResult) -> None:
    assert clean.exit_code == 0 and absent.exit_code == 0
    assert len(clean.of("step")) == STEPS and all(e["files_won"] == 9 for e in clean.of("step"))
    assert all(e["erased"] == [CULPRIT] for e in absent.of("step"))
    assert np.array_equal(clean.params, absent.params)


@pytest.mark.parametrize("behaviour", sorted(EXPECTED))
def test_zoo_behaviour(tmp_path: Path, behaviour: str, clean: RunResult, absent: RunResult) -> None:
    category, like_absence = EXPECTED[behaviour]
    result = run_cluster(tmp_path, zoo=behaviour, secret=_secret(), **CHANGES)
    steps = result.of("step")
    summary = result.of("summary")[-1]
    assert result.exit_code == 0 and summary["reason"] == "completed", summary
    assert [e["step"] for e in steps] == list(range(STEPS))
    bound = _step_bound(CHANGES)
    assert max(e["times"]["total"] for e in steps) <= bound
    assert any(CULPRIT in e[category] for e in steps), [(e[category], e["lying"], e["slow"]) for e in steps]
    for e in steps:
        assert set(e["lying"]) <= {CULPRIT} and e["outvoted"] == []  # honest workers are never liars
        if category != "lying":
            assert CULPRIT not in e["lying"]
        assert e["files_won"] == 9 and e["aggregation"]["action"] == "aggregate"
    assert summary[f"{category}_workers"].get(str(CULPRIT), 0) >= 1
    if behaviour == "slow-payload":  # outpaced, not cut: its payload drains and its connection survives the run
        joins = [e for e in result.of("worker") if e["worker"] == CULPRIT and e["state"] == "connected"]
        assert len(joins) == 1, joins
    if behaviour == "silent-digests":  # every file had its winner: the gather ended after the straggler grace
        assert min(e["times"]["compute"] for e in steps) < CHANGES["gather_timeout"] - 0.5
    assert np.array_equal(result.params, clean.params)
    if like_absence:
        assert np.array_equal(result.params, absent.params)
