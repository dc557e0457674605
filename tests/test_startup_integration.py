"""End to end, as a new user runs it: the README's main command, ``serve --scheme rama_two`` with agents joined by
hand through the printed command, MOLS K=35 r=5 on one machine, many worker slots per process training exactly like
one process per worker, and the errors that must come before any heavy work (one line, exit 2, nothing left behind).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shield_model.zoo.names import Dataset
from shield_model.zoo.sources import EMBEDDED
from shield_ps.cli.serve import listening_port
from tests.runtime_helpers import MNIST_DIR, REPO, Process, events, final_params, offline_user, run_serve

MNIST_EMBEDDED = EMBEDDED[Dataset.MNIST]

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
def test_readme_main_command_starts_and_finishes(tmp_path: Path) -> None:
    """As a new user runs it: the README's line as written, from an empty directory with no sibling folders, an
    empty HOME and no internet access: it trains on the embedded MNIST test split."""
    work = tmp_path / "work"
    work.mkdir()
    argv = _tool(_readme_command()) + ["--max-steps", "3"]
    assert "--data-dir" not in argv
    if not _port_free(README_PORT):  # another run on this machine holds the README's port: the only change
        argv += ["--port", "0"]
    with offline_user(tmp_path) as env:
        result = subprocess.run(argv, cwd=work, capture_output=True, text=True, timeout=600,
                                stdin=subprocess.DEVNULL, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "work"]
    assert list((tmp_path / "home").iterdir()) == []  # the failed first-use download left no empty cache
    runs = list((work / "runs").iterdir())
    assert len(runs) == 1
    assert f"run directory runs/{runs[0].name}" in output
    assert f"data MNIST: the embedded test split ({MNIST_EMBEDDED})" in output
    summary = events(runs[0], "summary")[-1]
    assert summary["reason"] == "completed" and summary["steps"] == 3
    steps = events(runs[0], "step")
    assert [e["step"] for e in steps] == [0, 1, 2]
    assert all(e["times"]["gather"] > 0 for e in steps), [e["times"] for e in steps]  # --vote auto times it too
    assert stat.S_IMODE((runs[0] / "token").stat().st_mode) == 0o600
    agent_logs = sorted((runs[0] / "agents").iterdir())
    assert 1 <= len(agent_logs) <= max(2, os.cpu_count() or 1), "15 slots in about one process per core"
    assert "median" in output and "s/step" in output


@pytest.mark.slow
def test_rama_two_with_an_agent_started_by_the_printed_command(tmp_path: Path) -> None:
    """``shield-ps serve --scheme rama_two`` (K=25, r=5 by default) prints the complete join command; run exactly as
    printed (25 slots in one process, the data directory the PS reads), it trains the job, says which workers it
    became and exits 0."""
    run = tmp_path / "run"
    with offline_user(tmp_path) as env:
        ps = Process(_tool(["shield-ps", "serve", "--scheme", "rama_two", "--port", "0", "--plain", "--max-steps", "3",
                            "--train-dir", str(run)]), tmp_path / "serve.log", env=env)
        agent = None
        try:
            join = ps.wait_for_output(r"join with: (shield-agent join .*)\n", timeout=120).group(1)
            assert join == (f"shield-agent join 127.0.0.1:{listening_port(ps.output())} --token-file {run}/token "
                            f"--workers 25 --data-dir {MNIST_EMBEDDED}")
            agent = Process(_tool(shlex.split(join)), tmp_path / "agent.log", env=env)
            assert ps.wait(timeout=600) == 0, ps.output()[-3000:]
            code = agent.wait(timeout=60)
        finally:
            for proc in ([agent] if agent else []) + [ps]:
                proc.stop()
    assert code == 0, agent.output()[-2000:]
    job = events(run, "job")[0]
    assert (job["workers"], job["replication"], job["files"]) == (25, 5, 25)
    steps = events(run, "step")
    assert len(steps) == 3 and all(e["files_won"] == 25 for e in steps)
    assert sorted(int(w) for w in re.findall(r"became worker (\d+)", agent.output())) == list(range(25))
    assert agent.output().count("the run ended: completed") == 25


@pytest.mark.slow
def test_an_agent_without_the_psdata_says_once_what_to_pass(tmp_path: Path) -> None:
    """Agents whose --data-dir lacks the PS's dataset, or holds other data (a training set of another size), stop
    with exit status 2 and one line that says what to pass, however many slots they host."""
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    for split in ("t10k", "train"):  # 10,000 training images where the PS trains on 8,000
        for kind in ("images-idx3", "labels-idx1"):
            shutil.copy(MNIST_DIR / f"t10k-{kind}-ubyte.gz", other / f"{split}-{kind}-ubyte.gz")
    run = tmp_path / "run"
    with offline_user(tmp_path) as env:
        ps = Process(_tool(["shield-ps", "serve", "--scheme", "detox", "--port", "0", "--plain", "--max-steps", "1",
                            "--train-dir", str(run)]), tmp_path / "serve.log", env=env)
        agents = []
        try:
            join = ps.wait_for_output(r"join with: (shield-agent join .*)\n", timeout=120).group(1)
            base = [a for a in shlex.split(join) if a != "--data-dir" and a != str(MNIST_EMBEDDED)]
            for name, folder in (("empty", empty), ("other", other)):
                argv = _tool(base[:base.index("--workers")] + ["--workers", "4", "--data-dir", str(folder)])
                agents.append(Process(argv, tmp_path / f"{name}.log", env=env))
            codes = [agent.wait(timeout=240) for agent in agents]
        finally:
            for proc in agents + [ps]:
                proc.stop()
    assert codes == [2, 2], [a.output()[-2000:] for a in agents]
    for agent, expected in zip(agents, (f"--data-dir {empty} does not hold MNIST",
                                        "the PS trains on MNIST with 8000 training images"), strict=False):
        errors = [line for line in agent.output().splitlines() if "ERROR" in line]
        assert len(errors) == 1 and expected in errors[0], agent.output()[-2000:]


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
    """``serve`` run from ``tmp_path/work`` by a new user without internet access (HOME is ``tmp_path/home``)."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    with offline_user(tmp_path) as env:
        return subprocess.run(_tool(["shield-ps", "serve", "--plain", *args]), cwd=work, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)


def _left_behind(tmp_path: Path) -> list[str]:
    """Everything under ``tmp_path`` but the empty work directory and the empty HOME of :func:`_serve_quick`."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name not in ("work", "home"))


def test_a_mistyped_data_dir_is_one_line_before_any_agent_starts_and_creates_nothing(tmp_path: Path) -> None:
    result = _serve_quick(tmp_path, "--local-agents", "15", "--data-dir", "../shraed/data/mnist", "--port", "0")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == ("shield-ps serve: error: --data-dir ../shraed/data/mnist does not exist (pass "
                                     "the directory that holds MNIST, or leave --data-dir out to use the cache "
                                     f"{tmp_path}/home/.cache/shield/data or the embedded test split)")
    assert "agent" not in result.stdout
    assert _left_behind(tmp_path) == []


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
    assert _left_behind(tmp_path) == []


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
    assert _left_behind(tmp_path) == []


def test_baseline_needs_no_replication_flag(tmp_path: Path) -> None:
    """``--scheme baseline`` defaults to r = 1 (it used to fail without --replication 1): validation passes and the
    command only stops at the port we hold."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = _serve_quick(tmp_path, "--scheme", "baseline", "--port", str(busy.getsockname()[1]))
    assert result.returncode == 2 and "is in use" in result.stderr, result.stderr
    assert _left_behind(tmp_path) == []
