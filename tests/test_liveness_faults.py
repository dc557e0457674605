"""Real faults that must never stall a run or lose it silently: a full disk, an interruption, too few files for the
aggregator, non-finite payloads. Small in-process clusters over real TCP (tests/byzantine_zoo.py), LeNet on MNIST.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shield_ps.checkpoint import list_checkpoints
from shield_ps.events import effective_events, read_events
from tests.byzantine_zoo import run_cluster
from tests.runtime_helpers import MNIST_DIR

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="local MNIST data missing"),
]

HONEST = [None] * 9
#: workers 5 and 8 share exactly one file (file 2) of Ramanujan Case 2 with K = 9, r = 3, m = 3
TWO_LIARS = [None] * 5 + ["scale:2", None, None, "scale:3"]
TWO_NAN = [None] * 5 + ["scale:nan", None, None, "scale:nan"]
TWO_SILENT = [None] * 5 + ["silent-digests", None, None, "silent-digests"]


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 6 MiB tmpfs: room for one LeNet checkpoint (3.4 MB) and the metrics, not for the next checkpoint's copy."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_reported_and_the_run_does_not_say_completed(small_disk: Path) -> None:
    run = small_disk / "run"
    result = run_cluster(run, slots=HONEST, max_steps=4, eval_freq=2)
    assert result.exit_code == 1
    events = read_events(run / "metrics.jsonl")
    failures = [e for e in events if e["kind"] == "checkpoint" and not e["ok"]]
    summary = [e for e in events if e["kind"] == "summary"][-1]
    assert failures and "No space left" in failures[0]["error"]
    assert summary["reason"].startswith("failed: the final checkpoint was not written")
    assert summary["checkpoint_errors"] and summary["last_checkpoint"] == 2
    assert [c.name for c in list_checkpoints(run / "checkpoints")] == ["step-00000002.npz"]


def test_interrupted_run_saves_its_last_good_state_and_resumes_bit_identically(tmp_path: Path) -> None:
    """Worker 8 reconnects every step (erased each step), so the run's tallies are not all zero. Direct broadcast: in
    a relay tree drawn from each run's own secret, worker 8 would fail different honest children in the two runs."""
    slots = [None] * 8 + ["reconnect-every-step"]
    whole = run_cluster(tmp_path / "whole", slots=slots, max_steps=6, eval_freq=2, relay="off")
    cut = tmp_path / "cut"
    first = run_cluster(cut, slots=slots, max_steps=6, eval_freq=2, interrupt_after=2, relay="off")
    assert first.exit_code == 130 and first.of("summary")[-1]["reason"] == "interrupted"
    assert [c.name for c in list_checkpoints(cut / "checkpoints")] == ["step-00000002.npz", "step-00000003.npz"]
    # As after a SIGKILL, when no interruption checkpoint could be written: resume from step 2, so step 2 runs twice.
    (cut / "checkpoints" / "step-00000003.npz").unlink()
    resumed = run_cluster(cut, slots=slots, max_steps=6, eval_freq=2, resume=True, relay="off")
    assert resumed.exit_code == 0 and np.array_equal(resumed.params, whole.params)
    assert [e["step"] for e in resumed.of("step")] == [0, 1, 2, 2, 3, 4, 5]  # metrics.jsonl is append-only...
    steps = [e["step"] for e in effective_events(resumed.events) if e["kind"] == "step"]
    assert steps == list(range(6))  # ...and the resumed job supersedes the step it ran again
    summary, reference = resumed.of("summary")[-1], whole.of("summary")[-1]
    assert summary["erased_workers"] == reference["erased_workers"] == {"8": 6}  # counts continue from step 2


def test_files_lost_to_silence_skip_the_update_and_the_run_fails_only_after_the_limit(tmp_path: Path) -> None:
    """Two silent holders of file 2 send no digest: nothing proves they are Byzantine (an honest worker can be slow),
    so the file's loss leaves s as it is. Krum with s = 3 needs n >= 2s + 3 = 9 = f files, so every step is short."""
    skipped = run_cluster(tmp_path / "skip", slots=TWO_SILENT, max_steps=3, aggregator="krum", agg_s=3,
                          gather_timeout=8.0)
    steps = skipped.of("step")
    assert skipped.exit_code == 0 and [e["aggregation"]["action"] for e in steps] == ["skip"] * 3
    assert all(e["files_won"] == 8 and {5, 8} <= set(e["erased"]) and e["lying"] == [] for e in steps)
    initial = run_cluster(tmp_path / "zero", slots=HONEST, max_steps=1, lr=1e-30)  # ~the initial parameters
    assert np.allclose(skipped.params, initial.params, rtol=0, atol=1e-20)
    assert skipped.of("summary")[-1]["steps_skipped"] == 3

    lowered = run_cluster(tmp_path / "lower", slots=TWO_SILENT, max_steps=2, aggregator="krum", agg_s=3,
                          short_step="lower-s", gather_timeout=8.0)
    assert lowered.exit_code == 0
    assert [(e["aggregation"]["action"], e["aggregation"]["s"]) for e in lowered.of("step")] == [("lower-s", 2)] * 2

    failed = run_cluster(tmp_path / "fail", slots=TWO_SILENT, max_steps=5, aggregator="krum", agg_s=3,
                         max_skipped_steps=2, gather_timeout=8.0)
    assert failed.exit_code == 1 and len(failed.of("step")) == 2
    assert "2 steps in a row could not be aggregated" in failed.of("summary")[-1]["reason"]


def test_a_proven_byzantine_majority_lowers_s_soundly_instead_of_skipping(tmp_path: Path) -> None:
    """Two liars with different values share file 2: all three of its holders replied and no two agree, so two of
    them were Byzantine (honest holders agree): file 2 is one of the s files the adversary could have won, and krum
    aggregates the 8 others with s = 3 - 1 = 2 every step instead of skipping (issue 26: co-holders that drop their
    own files cannot stop training)."""
    result = run_cluster(tmp_path, slots=TWO_LIARS, max_steps=3, aggregator="krum", agg_s=3)
    steps = result.of("step")
    assert result.exit_code == 0 and len(steps) == 3
    for e in steps:
        assert e["files_won"] == 8 and e["outvoted"] == [5, 8] and e["lying"] == [], e
        assert (e["aggregation"]["action"], e["aggregation"]["s"]) == ("lower-s", 2), e
        assert e["aggregation"]["reason"].startswith("proven:"), e
    assert result.of("summary")[-1]["steps_skipped"] == 0


def test_a_non_finite_winning_payload_is_dropped_never_aggregated(tmp_path: Path) -> None:
    """Two holders of file 2 agree on an all-NaN gradient: their digest wins the vote, the PS finds the payload
    non-finite when it arrives, and the file is dropped; the parameters stay finite."""
    result = run_cluster(tmp_path, slots=TWO_NAN, max_steps=2)
    steps = result.of("step")
    assert result.exit_code == 0 and all(e["files_won"] == 8 and e["files_dropped"] == 1 for e in steps)
    assert all({5, 8} <= set(e["outvoted"]) and e["lying"] == [] for e in steps)
    assert np.isfinite(result.params).all()
