"""Synthetic compute (benchmarks and tests only, issue 16): pure pseudo-gradients, the flags that select it, and a
real synthetic run over TCP whose final parameters do not depend on the aggregation's thread count."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shield_agent.synthetic_slot import make_computer
from shield_model.errors import ComputeError
from shield_model.synthetic import (
    DECAY,
    NOISE_PERIOD,
    SyntheticComputer,
    file_noise,
    initial_parameters,
    synthetic_gradient,
)
from tests.runtime_helpers import events, final_params, run_serve, start_agent, start_serve


def test_gradient_is_a_pure_function_of_params_step_file_seed() -> None:
    d = 3 * NOISE_PERIOD + 17
    params = initial_parameters(d, seed=4)
    a = synthetic_gradient(params, 5, 2, 4, np.empty(d, np.float32))
    b = synthetic_gradient(params.copy(), 5, 2, 4, np.full(d, np.nan, np.float32))
    np.testing.assert_array_equal(a, b)
    noise = file_noise(4, 5, 2)
    expected = params * DECAY + np.resize(noise, d)
    np.testing.assert_array_equal(a, expected)
    for other in ((6, 2, 4), (5, 3, 4), (5, 2, 5)):
        assert not np.array_equal(a, synthetic_gradient(params, *other, np.empty(d, np.float32))), other
    assert not np.array_equal(a, synthetic_gradient(params * 2, 5, 2, 4, np.empty(d, np.float32)))


def test_initial_parameters_are_seeded_and_sized() -> None:
    np.testing.assert_array_equal(initial_parameters(1000, 1), initial_parameters(1000, 1))
    assert not np.array_equal(initial_parameters(1000, 1), initial_parameters(1000, 2))
    assert initial_parameters(7, 0).dtype == np.float32 and initial_parameters(7, 0).shape == (7,)
    with pytest.raises(ComputeError, match="1..1073741824"):
        initial_parameters(0, 0)


def test_computer_waits_its_delay_and_reports_it() -> None:
    computer = SyntheticComputer(10_000, seed=0, delay=0.2)
    params = computer.initial_parameters()
    started = time.perf_counter()
    result = computer.file_gradient(params, 0, 1)
    assert time.perf_counter() - started >= 0.2 and result.seconds >= 0.2
    np.testing.assert_array_equal(result.gradient, synthetic_gradient(params, 0, 1, 0, np.empty_like(params)))
    with pytest.raises(ComputeError, match="0..3600"):
        SyntheticComputer(10, 0, -1.0)


def test_agent_and_ps_must_agree_on_synthetic() -> None:
    assert make_computer(None, None, 0) is None
    assert make_computer(100, 0.0, 0).num_params == 100
    with pytest.raises(ComputeError, match="join with --synthetic"):
        make_computer(100, None, 0)
    with pytest.raises(ComputeError, match="runs a real job"):
        make_computer(None, 1.0, 0)


@pytest.mark.parametrize("argv, message", [
    (["shield_agent.cli", "join", "127.0.0.1:1", "--synthetic", "-1"], "seconds per file in 0..3600"),
    (["shield_agent.cli", "join", "127.0.0.1:1", "--synthetic", "soon"], "seconds per file in 0..3600"),
    (["shield_ps.cli", "serve", "--synthetic-d", "0"], "--synthetic-d"),
    (["shield_ps.cli", "serve", "--synthetic-d", str(2**31)], "must be in 1..1073741824"),
    (["shield_ps.cli", "serve", "--agg-threads", "65"], "must be in 1..64"),
])
def test_flags_are_validated(argv: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_real_agent_refuses_a_synthetic_job(tmp_path: Path) -> None:
    """A torch agent joining a synthetic PS says what to do instead of computing the wrong thing."""
    ps, port = start_serve(tmp_path / "run", "--synthetic-d", "1000", "--workers", "3", "--scheme", "detox",
                           "--max-steps", "2", "--join-timeout", "20")
    try:
        agent = start_agent(port, tmp_path / "agent.log")
        try:
            assert agent.wait(timeout=60) == 2
            assert "join with --synthetic SECONDS_PER_FILE" in agent.output()
        finally:
            agent.stop()
    finally:
        ps.stop()


def test_synthetic_run_is_deterministic_across_aggregation_threads_and_codecs(tmp_path: Path) -> None:
    """Two synthetic runs (DETOX K=9, real agent processes over TCP), one with 1 aggregation thread and ZSTD on
    every link, one with 3 threads and --codec auto, end with bit-identical parameters, and the parameters moved."""
    flags = ["--synthetic-d", "200003", "--scheme", "detox", "--workers", "9", "--local-agents", "9",
             "--max-steps", "4", "--eval-freq", "4", "--aggregator", "coord-median", "--seed", "3"]
    finals = []
    for threads, codec in (("1", "zstd"), ("3", "auto")):
        run = tmp_path / f"threads-{threads}"
        result = run_serve(run, *flags, "--agg-threads", threads, "--codec", codec, timeout=240)
        assert result.returncode == 0, (run / "serve.log").read_text()[-3000:]
        steps = events(run, "step")
        assert [e["files_won"] for e in steps] == [3] * 4, steps
        # one agent process hosts the 9 slots: the relay broadcast sends it one vector per step
        assert all(e["codecs"]["out"] == ({"zstd": 1} if codec == "zstd" else {"none": 1}) for e in steps), steps
        finals.append(final_params(run))
    (step_a, a), (step_b, b) = finals
    assert step_a == step_b == 4
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, initial_parameters(200003, 3))
