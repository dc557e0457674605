"""The sweep's in-process engine against the real thing: a ``shield-ps serve --local-agents 15`` run (MOLS, ALIE with
``--alie-z auto``, coordinate median, a decaying learning rate) and the engine on the same configuration end with
bit-identical parameters, momentum and evaluations; an interrupted engine run resumed from its checkpoint ends where an
uninterrupted one does."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shield_ps.checkpoint import load_latest
from shield_ps.config import ServeConfig
from shield_ps.events import read_events
from shield_ps.sweep.engine import InProcessRun, write_config
from tests.runtime_helpers import MNIST_DIR, run_serve

pytestmark = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="needs the real MNIST test split")

#: 4 steps, lr 0.05 halved every 2 steps, 2 samples per file of 25, q = 2 (1 corrupted file every step).
FLAGS = ("--scheme", "mols", "--workers", "15", "--replication", "3", "--byzantine", "2", "--attack", "alie",
         "--alie-z", "auto", "--aggregator", "coord-median", "--batch-size", "50", "--lr", "0.05", "--gamma", "0.5",
         "--lr-step", "2", "--max-steps", "4", "--eval-freq", "2", "--seed", "3")


def config(train_dir: Path, **changes) -> ServeConfig:
    return ServeConfig(scheme="mols", workers=15, replication=3, byzantine=2, attack="alie", alie_z="auto",
                       aggregator="coord-median", batch_size=50, lr=0.05, gamma=0.5, lr_step=2, max_steps=4,
                       eval_freq=2, seed=3, data_dir=str(MNIST_DIR), train_dir=str(train_dir)).replace(**changes)


def engine_run(train_dir: Path, **changes) -> str:
    from shield_ps.events import EventSink

    engine = InProcessRun(config(train_dir, **changes))
    sink = EventSink(train_dir / "metrics.jsonl")
    try:
        return engine.run(sink)
    finally:
        sink.close()


def by_kind(train_dir: Path, kind: str) -> list[dict]:
    return [e for e in read_events(train_dir / "metrics.jsonl") if e.get("kind") == kind]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_engine_ends_bit_identical_to_a_real_serve_run(tmp_path: Path) -> None:
    served, engine = tmp_path / "serve", tmp_path / "engine"
    result = run_serve(served, *FLAGS, "--local-agents", "15", timeout=800)
    assert result.returncode == 0, (served / "serve.log").read_text()[-3000:]
    assert engine_run(engine) == "completed"
    cluster, alone = load_latest(served / "checkpoints"), load_latest(engine / "checkpoints")
    assert cluster is not None and alone is not None and cluster.step == alone.step == 4
    assert cluster.config_hash == alone.config_hash
    np.testing.assert_array_equal(alone.params, cluster.params)
    np.testing.assert_array_equal(alone.velocity, cluster.velocity)
    assert not np.array_equal(alone.params, InProcessRun(config(tmp_path / "x")).computer.initial_parameters())
    assert [(e["step"], e["top1"], e["loss"]) for e in by_kind(engine, "eval")] == \
        [(e["step"], e["top1"], e["loss"]) for e in by_kind(served, "eval")]
    steps_cluster, steps_engine = by_kind(served, "step"), by_kind(engine, "step")
    assert [e["files_corrupted"] for e in steps_engine] == [e["files_corrupted"] for e in steps_cluster] == [1] * 4
    assert [e["lr"] for e in steps_engine] == [e["lr"] for e in steps_cluster] == [0.05, 0.025, 0.025, 0.0125]
    assert [e["outvoted"] for e in steps_engine] == [e["outvoted"] for e in steps_cluster]
    np.testing.assert_allclose([e["loss"] for e in steps_engine], [e["loss"] for e in steps_cluster], rtol=1e-6)
    summary = by_kind(engine, "summary")[-1]
    assert summary["reason"] == "completed" and summary["files_corrupted"] == 4


@pytest.mark.timeout(600)
def test_an_interrupted_engine_run_resumes_to_the_same_end(tmp_path: Path) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert engine_run(straight, max_steps=20, eval_freq=5) == "completed"
    cmd = [sys.executable, "-m", "shield_ps.sweep.engine", "--config",
           str(write_config(config(stopped, max_steps=20, eval_freq=5), stopped / "config.json"))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(
                e.get("kind") == "step" and e["step"] >= 3 for e in _events(stopped)):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    interrupted = [e for e in _events(stopped) if e.get("kind") == "summary"]
    assert interrupted and interrupted[-1]["reason"] == "interrupted" and interrupted[-1]["steps"] < 20
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    jobs = by_kind(stopped, "job")
    assert jobs[-1]["resumed"] and jobs[-1]["start_step"] == interrupted[-1]["steps"]
    a, b = load_latest(straight / "checkpoints"), load_latest(stopped / "checkpoints")
    assert a is not None and b is not None and a.step == b.step == 20
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.velocity, b.velocity)


def test_a_checkpoint_of_other_settings_is_refused(tmp_path: Path) -> None:
    from shield_ps.errors import CheckpointError

    assert engine_run(tmp_path, max_steps=2) == "completed"
    with pytest.raises(CheckpointError, match="lr: 0.05 -> 0.5"):
        engine_run(tmp_path, max_steps=4, lr=0.5, resume=True)


def _events(train_dir: Path) -> list[dict]:
    path = train_dir / "metrics.jsonl"
    return read_events(path) if path.is_file() else []
