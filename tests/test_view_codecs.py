"""The view shows the codec ``--codec auto`` chose, per direction (issue 16)."""
from __future__ import annotations

import pytest

from shield_ps.view.plain import format_event
from shield_ps.view.state import BadEvent, ViewState, codec_text, fold

JOB = {"kind": "job", "time": 1.0, "scheme": "mols", "workers": 15, "files": 25, "replication": 3,
       "files_per_worker": 5, "network": "LeNet", "dataset": "MNIST", "batch_size": 250, "aggregator": "coord-median",
       "attack": "none", "byzantine": 0, "byzantine_gen": "worst", "total_steps": 10, "steps_per_epoch": 5,
       "start_step": 0, "seed": 0, "config_hash": "x", "resumed": False}


def _step(**extra: object) -> dict:
    return {"kind": "step", "time": 2.0, "step": 0, "epoch": 0, "lr": 0.01, "loss": 1.0, "files": 25,
            "files_won": 25, "files_dropped": 0, "files_corrupted": 0, "flagged": [], "erased": [], "bytes_in": 1,
            "bytes_out": 1, "times": {"total": 0.5}, **extra}


def test_codecs_of_the_last_step_are_shown() -> None:
    state = fold(fold(ViewState(), JOB), _step(codecs={"out": {"none": 14, "zstd": 1}, "in": {"none": 25}}))
    assert codec_text(state) == "out none 14 zstd 1 · in none 25"
    assert "in 0.500s codec out none 14 zstd 1 · in none 25 eta" in format_event(_step(), state)
    later = fold(state, _step(step=1))  # an event without codecs (older PS) shows none
    assert codec_text(later) == "" and "codec" not in format_event(_step(step=1), later)


def test_malformed_codecs_are_rejected() -> None:
    state = fold(ViewState(), JOB)
    for bad in ({"out": 3}, ["none"], {"out": {"none": "many"}}):
        with pytest.raises(BadEvent):
            from shield_ps.view.state import _fold_step
            _fold_step(state, _step(codecs=bad))
