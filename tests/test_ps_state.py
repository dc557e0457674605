"""Optimizer, schedule, checkpoints and the event sink of the PS."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shield_ps.checkpoint import Checkpoint, list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from shield_ps.errors import CheckpointError, ConfigError
from shield_ps.events import EventSink, read_events
from shield_ps.optimizer import MomentumSGD, Schedule


def test_schedule_steps_down_as_the_original() -> None:
    """The original's 1-based step c = t + 1 decays when c % lr_step == 0 to lr0 * gamma ** (c // lr_step): with
    lr_step 10, 0-based steps 0..8 run at lr0, 9..18 at lr0/2, 19..28 at lr0/4."""
    schedule = Schedule(lr0=0.1, gamma=0.5, lr_step=10)
    assert [schedule.lr_at(t) for t in (0, 8, 9, 10, 18, 19, 25)] == [0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]
    assert Schedule(lr0=1.0, gamma=0.5, lr_step=1).lr_at(0) == 0.5   # c = 1 is already a multiple of 1
    with pytest.raises(ConfigError, match="gamma"):
        Schedule(lr0=0.1, gamma=1.5)


def test_momentum_sgd_matches_the_reference_recurrence() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(50).astype(np.float32)
    ref_w, ref_v = w.astype(np.float64), np.zeros(50)
    opt = MomentumSGD(w, momentum=0.9)
    for _ in range(5):
        g = rng.standard_normal(50).astype(np.float32)
        ref_v = 0.9 * ref_v + g
        ref_w -= 0.05 * ref_v
        opt.step(g.copy(), lr=0.05)
    np.testing.assert_allclose(w, ref_w, rtol=1e-5, atol=1e-6)


def _checkpoint(step: int, d: int = 10) -> Checkpoint:
    rng = np.random.default_rng(step)
    return Checkpoint(step=step, params=rng.standard_normal(d).astype(np.float32),
                      velocity=rng.standard_normal(d).astype(np.float32), config={"lr": 0.1},
                      config_hash="abc", rng_state={"seed": 1}, extra={})


def test_checkpoint_round_trip_and_retention(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, _checkpoint(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030.npz", "step-00000040.npz"]
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.step == 40
    np.testing.assert_array_equal(loaded.params, _checkpoint(40).params)
    assert loaded.config == {"lr": 0.1} and loaded.rng_state == {"seed": 1}
    assert not list(tmp_path.glob(".tmp-*"))


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(10))
    newest = save_checkpoint(tmp_path, _checkpoint(20))
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    newest.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        load_checkpoint(newest)
    loaded = load_latest(tmp_path)
    assert loaded is not None and loaded.step == 10


def test_event_sink_writes_jsonl_and_survives_bad_subscriber(tmp_path: Path) -> None:
    sink = EventSink(tmp_path / "metrics.jsonl")
    seen: list[dict] = []

    def broken(event: dict) -> None:
        raise RuntimeError("boom")

    sink.subscribe(broken)
    sink.subscribe(seen.append)
    sink.emit("step", step=1, loss=float("nan"))
    sink.emit("eval", step=1, top1=0.5)
    sink.close()
    events = read_events(tmp_path / "metrics.jsonl")
    assert [e["kind"] for e in events] == ["step", "eval"]
    assert events[0]["loss"] is None
    assert len(seen) == 2
    json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
