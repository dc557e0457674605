"""``--vote auto`` end to end: real PS and agent processes whose kernel settings differ (determinism classes).

On this CPU ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2`` each change LeNet's gradients (relative
6.7e-8 and 3.5e-7 against the default AVX-512 kernels) and ResNet-18's (8.8e-7 and 5.9e-4): honest replicas of
different classes never have equal digests. Checked here: exact is refused over mixed classes; auto completes with no
honest file dropped at an ingress of one payload per file plus the sketches; a deviating agent is outvoted, one that
sketches its honest gradient while committing to another is proven to lie; ALIE still corrupts exactly c_max(q).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.runtime_helpers import MNIST_DIR, TOKEN, Process, events, run_serve, start_serve

AVX2 = "ATEN_CPU_CAPABILITY=avx2"
ONEDNN = "ONEDNN_MAX_CPU_ISA=AVX2"
SKETCH_BYTES = 256 * 32 * 8
LENET_D = 431_080


def _summary(train_dir: Path) -> dict:
    found = events(train_dir, "summary")
    assert found, (train_dir / "serve.log").read_text()[-3000:]
    return found[-1]


def _agent(port: int, log: Path, env: dict[str, str], *extra: str) -> Process:
    return Process([sys.executable, "-m", "shield_agent.cli", "-v", "join", f"127.0.0.1:{port}", "--token", TOKEN,
                    "--data-dir", str(MNIST_DIR), "--no-reconnect", *extra], log, env=env)


def _env(spec: str) -> dict[str, str]:
    name, _, value = spec.partition("=")
    return {name: value} if spec else {}


def _start_in_slots(port: int, tmp_path: Path, ps: Process, agents: list[tuple[str, tuple[str, ...]]]) -> list[Process]:
    """Start agents one by one so that agent i takes worker slot i (each waits for the previous handshake)."""
    started: list[Process] = []
    for slot, (env, extra) in enumerate(agents):
        proc = _agent(port, tmp_path / f"agent-{slot}.log", _env(env), *extra)
        started.append(proc)
        proc.wait_for_output(rf"(as peer|became worker) {slot}\b", timeout=240)
        assert ps.proc.poll() is None, ps.output()[-3000:]
    return started


def test_exact_vote_is_refused_when_no_class_is_a_majority(tmp_path: Path) -> None:
    result = run_serve(tmp_path, "--scheme", "detox", "--workers", "3", "--replication", "3", "--max-steps", "2",
                       "--vote", "exact", "--local-agents", "3", "--agent-processes", "3",
                       "--local-agent-env", f"1:{AVX2}", "--local-agent-env", f"2:{ONEDNN}")
    log = (tmp_path / "serve.log").read_text()
    assert result.returncode == 1, log[-3000:]
    assert "3 determinism classes, none of them a majority" in log and "--vote auto" in log
    assert "cpu_capability" in log
    assert not events(tmp_path, "step")


def test_exact_vote_excludes_a_minority_class_and_runs_on(tmp_path: Path) -> None:
    result = run_serve(tmp_path, "--scheme", "detox", "--workers", "3", "--replication", "3", "--max-steps", "2",
                       "--vote", "exact", "--local-agents", "3", "--agent-processes", "3",
                       "--local-agent-env", f"2:{AVX2}")
    log = (tmp_path / "serve.log").read_text()
    assert result.returncode == 0, log[-3000:]
    assert "outside the majority class" in log and "cpu_capability=AVX2 (majority AVX512)" in log
    steps = events(tmp_path, "step")
    assert len(steps) == 2 and all(e["files_won"] == 1 for e in steps)
    agent_logs = "".join(p.read_text() for p in (tmp_path / "agents").glob("*.log"))
    assert agent_logs.count("the PS refused this agent") == 1  # told once, and it stopped instead of retrying


def test_auto_vote_completes_over_three_classes_with_group_medians(tmp_path: Path) -> None:
    result = run_serve(tmp_path, "--scheme", "detox", "--workers", "3", "--replication", "3", "--max-steps", "5",
                       "--eval-freq", "5", "--local-agents", "3", "--agent-processes", "3",
                       "--local-agent-env", f"1:{AVX2}",
                       "--local-agent-env", f"2:{ONEDNN}")
    assert result.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    classes = events(tmp_path, "classes")[-1]
    assert len(classes["classes"]) == 3 and 1e-6 <= classes["tolerance"] < 1e-4
    workers = [e for e in events(tmp_path, "worker") if e["state"] == "connected"]
    assert {e["class"] for e in workers} == {c["id"] for c in classes["classes"]}
    steps = events(tmp_path, "step")
    assert len(steps) == 5
    f = steps[0]["files"]
    for e in steps:
        assert e["files_dropped"] == 0 and not e["lying"] and not e["outvoted"], e
        assert e["sketch"]["disputed"] == f  # three classes: no two digests of a file are ever equal
        # every file is split: the median of its group's three payloads (one per class), plus the sketches
        assert e["sketch"]["split"] == f and e["sketch"]["recomputed"] == 0, e["sketch"]
        assert e["times"]["gather"] > 0  # the payloads fetched after the sketch vote are timed (the view's bar)
        assert e["bytes_in"] <= 3.1 * f * LENET_D * 4 + 3 * f * SKETCH_BYTES * 1.05, e["bytes_in"]
    assert sum(e["sketch"]["sketch_won"] for e in steps) >= 4  # won by the sketch vote
    summary = _summary(tmp_path)
    assert summary["files_dropped"] == 0 and summary["lying_workers"] == {} and summary["outvoted_workers"] == {}


def test_a_deviating_agent_is_outvoted_and_a_sketch_liar_is_proven_to_lie(tmp_path: Path) -> None:
    """Two groups of three (detox K=6): worker 0 commits to g + 10 tol but sketches g (and grinds its digest a little,
    which no longer wins anything): its payload is fetched with its group's, lies 10 tol from their median, and its
    recomputed sketch proves the lie; worker 3 commits to and sketches g + 10 tol (outvoted). Neither payload is
    ever taken: every file is won without them."""
    tol = 1e-4
    ps, port = start_serve(tmp_path, "--scheme", "detox", "--workers", "6", "--replication", "3", "--max-steps", "4",
                           "--eval-freq", "4", "--vote-tol", str(tol), "--digest-grace-floor", "2")
    # (the floor: a worker late once is then waited for only that floor for a while; under a loaded host's noise the
    # deviator could miss 0.05 s and be erased rather than outvoted)
    # it grinds 2 bits: 4096 hashes of a 1.7 MB vector a file (12 bits) made it a slow committer, and a file
    # without a winner waits only a straggler grace for a digest (docs/liveness.md): it was erased, never proven
    liar = ("--adversary", f"sketch-liar:{10 * tol},centre,2")
    deviator = ("--adversary", f"deviator:{10 * tol}")
    agents = _start_in_slots(port, tmp_path, ps, [("", liar), ("", ()), (AVX2, ()),
                                                  ("", deviator), ("", ()), (AVX2, ())])
    try:
        assert ps.wait(timeout=400) == 0, ps.output()[-3000:]
    finally:
        for proc in agents + [ps]:
            proc.stop()
    steps = events(tmp_path, "step")
    assert len(steps) == 4
    for e in steps:
        assert e["files_won"] == 2 and e["files_dropped"] == 0, e
        assert e["outvoted"] == [3], e
    # file 0 goes to the sketch round unless workers 1 and 2 happen to compute the same bits that step (the two kernel
    # settings agree on some LeNet steps): the first time it does, the liar is proven to lie, and then it sits out
    # the following steps (excluded: its files are erasures)
    convicted = [i for i, e in enumerate(steps) if e["lying"]]
    assert len(convicted) == 1 and steps[convicted[0]]["lying"] == [0], steps
    assert all(e["excluded"] == [0] for e in steps[convicted[0] + 1:])
    assert all(e["excluded"] == [] for e in steps[:convicted[0] + 1])
    assert "worker 0 lied about file 0" in ps.output()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_alie_over_mixed_classes_still_corrupts_exactly_c_max(tmp_path: Path) -> None:
    # MOLS K=15 r=3, q=3: the worst-case set wins c_max(3) = 3 of the 25 files (tests/test_runtime_integration.py).
    # 15 worker slots in three agent processes, one per class
    result = run_serve(tmp_path, "--scheme", "mols", "--workers", "15", "--replication", "3", "--local-agents", "15",
                       "--agent-processes", "3",
                       "--max-steps", "3", "--eval-freq", "3", "--byzantine", "3", "--attack", "alie",
                       "--join-timeout", "900",
                       "--local-agent-env", f"1:{AVX2}", "--local-agent-env", f"2:{ONEDNN}",
                       timeout=1400)
    assert result.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert len(events(tmp_path, "classes")[-1]["classes"]) == 3
    steps = events(tmp_path, "step")
    assert len(steps) == 3
    for e in steps:
        assert e["files_corrupted"] == 3 and e["files_dropped"] == 0 and e["sketch"]["disputed"] > 0, e


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resnet18_on_mnist_over_three_classes(tmp_path: Path) -> None:
    # oneDNN limited to AVX2 moves ResNet-18's gradients by ~6e-4 (BatchNorm jumps): a real tolerance, two steps.
    # Two worker slots per process: each class has r' = 2 members that report one probe, so its spread counts.
    result = run_serve(tmp_path, "--scheme", "detox", "--workers", "6", "--replication", "3", "--network",
                       "ResNet18", "--max-steps", "2", "--eval-freq", "2", "--local-agents", "6",
                       "--agent-processes", "3",
                       "--local-agent-env", f"1:{AVX2}", "--local-agent-env", f"2:{ONEDNN}", timeout=840)
    assert result.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    classes = events(tmp_path, "classes")[-1]
    assert len(classes["classes"]) == 3 and classes["tolerance"] > 1e-4 and classes["unattested"] == []
    steps = events(tmp_path, "step")
    assert len(steps) == 2
    for e in steps:
        assert e["files_dropped"] == 0 and not e["lying"] and e["sketch"]["disputed"] >= 1, e
        assert e["bytes_in"] <= 3.1 * 2 * 11_173_962 * 4 + 6 * SKETCH_BYTES * 1.05, e["bytes_in"]
