"""End to end, as a new user runs it: the README's main command, ``serve --scheme rama_two`` with agents joined by
hand through the printed command, MOLS K=35 r=5 on one machine, many worker slots per process training exactly like
one process per worker, and the errors that must come before any heavy work (one line, exit 2, nothing left behind).
"""
from __future__ import annotations

import os
import re
import shlex
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.runtime_helpers import MNIST_DIR, REPO, Process, events, final_params, run_serve

needs_mnist = pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                                 reason="local MNIST data missing")
README_PORT = 7700


def _readme_command() -> list[str]:
    """The README's install-and-train command, without the install part."""
    text = (REPO / "README.md").read_text()
    line = next(line for line in text.splitlines() if line.startswith("python -m pip install -e . && shield-ps"))
    return shlex.split(line.split("&&", 1)[1])


def _tool(argv: list[str]) -> list[str]:
    """``shield-ps ...``/``shield-agent ...`` through this interpreter (the console script of the checkout under
    test may not be on PATH)."""
    module = {"shield-ps": "shield_ps.cli", "shield-agent": "shield_agent.cli"}[argv[0]]
    return [sys.executable, "-m", module, *argv[1:]]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
@needs_mnist
def test_readme_main_command_starts_and_finishes(tmp_path: Path) -> None:
    """Run from a directory laid out like the README's (the data at ../shared/data/mnist)."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "mnist").symlink_to(MNIST_DIR)
    argv = _tool(_readme_command()) + ["--max-steps", "3"]
    if not _port_free(README_PORT):  # another run on this machine holds the README's port: the only change
        argv += ["--port", "0"]
    result = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    runs = list((work / "runs").iterdir())
    assert len(runs) == 1
    assert f"run directory runs/{runs[0].name}" in output
    summary = events(runs[0], "summary")[-1]
    assert summary["reason"] == "completed" and summary["steps"] == 3
    assert [e["step"] for e in events(runs[0], "step")] == [0, 1, 2]
    assert stat.S_IMODE((runs[0] / "token").stat().st_mode) == 0o600
    agent_logs = sorted((runs[0] / "agents").iterdir())
    assert 1 <= len(agent_logs) <= max(2, os.cpu_count() or 1), "15 slots in about one process per core"
    assert "median" in output and "s/step" in output


@pytest.mark.slow
@needs_mnist
def test_rama_two_as_written_with_agents_joined_by_hand(tmp_path: Path) -> None:
    """``shield-ps serve --scheme rama_two`` (K=25, r=5 by default) prints how to join; two agent processes started
    with exactly that command (13 + 12 slots) train it; each says which workers it became and exits 0."""
    run = tmp_path / "run"
    ps = Process(_tool(["shield-ps", "serve", "--scheme", "rama_two", "--port", "0", "--plain", "--data-dir",
                        str(MNIST_DIR), "--max-steps", "3", "--train-dir", str(run)]), tmp_path / "serve.log")
    agents: list[Process] = []
    try:
        join = ps.wait_for_output(r"join with: (shield-agent join \S+ --token-file \S+)", timeout=120).group(1)
        assert f"--token-file {run}/token" in join
        for i, slots in enumerate((13, 12)):
            agents.append(Process(_tool(shlex.split(join)) + ["--data-dir", str(MNIST_DIR), "--workers", str(slots)],
                                  tmp_path / f"agent{i}.log"))
        assert ps.wait(timeout=600) == 0, ps.output()[-3000:]
        codes = [agent.wait(timeout=60) for agent in agents]
    finally:
        for proc in agents + [ps]:
            proc.stop()
    assert codes == [0, 0], [a.output()[-2000:] for a in agents]
    job = events(run, "job")[0]
    assert (job["workers"], job["replication"], job["files"]) == (25, 5, 25)
    steps = events(run, "step")
    assert len(steps) == 3 and all(e["files_won"] == 25 for e in steps)
    became = [int(w) for a in agents for w in re.findall(r"became worker (\d+)", a.output())]
    assert sorted(became) == list(range(25))
    assert all("the run ended: completed" in a.output() for a in agents)


@pytest.mark.slow
@needs_mnist
def test_mols_k35_r5_runs_on_one_machine(tmp_path: Path) -> None:
    """The paper's MOLS K=35, r=5 (f=49): 35 local worker slots in a few processes, every file won every step."""
    result = run_serve(tmp_path, "--scheme", "mols", "--workers", "35", "--replication", "5", "--local-agents", "35",
                       "--max-steps", "3", "--eval-freq", "3", timeout=600)
    assert result.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    job = events(tmp_path, "job")[0]
    assert (job["workers"], job["files"], job["replication"]) == (35, 49, 5)
    steps = events(tmp_path, "step")
    assert [e["step"] for e in steps] == [0, 1, 2]
    assert all(e["files_won"] == 49 and not e["flagged"] and not e["erased"] for e in steps)
    assert len(list((tmp_path / "agents").iterdir())) <= max(2, os.cpu_count() or 1)


@pytest.mark.slow
@needs_mnist
def test_slots_in_one_process_train_exactly_as_one_process_per_worker(tmp_path: Path) -> None:
    flags = ["--scheme", "detox", "--workers", "3", "--replication", "3", "--local-agents", "3", "--max-steps", "6",
             "--eval-freq", "6", "--seed", "5"]
    apart, together = tmp_path / "apart", tmp_path / "together"
    assert run_serve(apart, *flags, "--agent-processes", "3").returncode == 0, (apart / "serve.log").read_text()
    assert run_serve(together, *flags, "--agent-processes", "1").returncode == 0, (together / "serve.log").read_text()
    assert len(list((apart / "agents").iterdir())) == 3 and len(list((together / "agents").iterdir())) == 1
    for run in (apart, together):
        assert all(not e["flagged"] and e["files_won"] == e["files"] for e in events(run, "step"))
    (step_a, params_a), (step_t, params_t) = final_params(apart), final_params(together)
    assert step_a == step_t == 6
    np.testing.assert_array_equal(params_a, params_t)


def _serve_quick(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_tool(["shield-ps", "serve", "--plain", *args]), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_port_in_use_is_one_line_before_heavy_work_and_leaves_nothing(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve_quick(tmp_path, "--port", str(port), "--train-dir", "run", "--data-dir", str(MNIST_DIR),
                              "--local-agents", "15")
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and f"port {port} is in use" in errors[0] and "--port 0" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,expected", [
    (["--scheme", "rama_two", "--workers", "9"], "--workers 9 --replication 3"),
    (["--scheme", "mols", "--workers", "10"], "--workers 15 --replication 3"),
    (["--resume"], "--resume without --train-dir"),
])
def test_refused_configuration_names_what_works_and_leaves_nothing(tmp_path: Path, args: list[str],
                                                                   expected: str) -> None:
    result = _serve_quick(tmp_path, *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_baseline_needs_no_replication_flag(tmp_path: Path) -> None:
    """``--scheme baseline`` defaults to r = 1 (it used to fail without --replication 1): validation passes and the
    command only stops at the port we hold."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _serve_quick(tmp_path, "--scheme", "baseline", "--port", str(busy.getsockname()[1]))
    assert result.returncode == 2 and "is in use" in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
