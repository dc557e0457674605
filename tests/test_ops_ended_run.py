"""`up` right after a run ended: the PS writes its summary a moment before it exits, and `up` must not take the ending
PS for a running one (it would attach to it, then report it failed). The wait runs as a real shell script over a
real process standing in for the PS."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shield_ops import deploy

JOB, STEP, SUMMARY = {"kind": "job"}, {"kind": "step", "step": 0}, {"kind": "summary", "reason": "completed"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "shield/run").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def ps(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A live process named by ``shield/ps.pid``; it exits when its stdin is closed."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    (home / "shield/ps.pid").write_text(f"{proc.pid}\n")
    yield proc
    proc.kill()
    proc.wait(timeout=30)


def _metrics(home: Path, *events: dict[str, Any]) -> None:
    (home / "shield/run/metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


def _wait_script(home: Path, wait_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["bash", "-c", deploy.ended_ps_exit_script(wait_s)], env={**os.environ, "HOME": str(home)})


def test_up_waits_for_a_ps_whose_run_ended_to_exit(home: Path, ps: subprocess.Popen[bytes]) -> None:
    _metrics(home, JOB, STEP, SUMMARY)
    script = _wait_script(home, wait_s=120)
    with pytest.raises(subprocess.TimeoutExpired):  # the PS lives, so the wait cannot have ended
        script.wait(timeout=1.0)
    assert ps.stdin is not None
    ps.stdin.close()
    assert script.wait(timeout=60) == 0
    assert ps.poll() is not None


def test_a_running_ps_is_not_waited_for_even_after_an_earlier_summary(home: Path, ps: subprocess.Popen[bytes]) -> None:
    _metrics(home, JOB, STEP, SUMMARY, JOB, STEP)  # a resumed run appends to the metrics of the run it resumes
    assert _wait_script(home, wait_s=600).wait(timeout=60) == 0
    assert ps.poll() is None


def test_a_ps_that_outlives_its_summary_is_waited_for_only_up_to_the_bound(home: Path,
                                                                          ps: subprocess.Popen[bytes]) -> None:
    _metrics(home, JOB, SUMMARY)
    assert _wait_script(home, wait_s=0.4).wait(timeout=60) == 0
    assert ps.poll() is None


def test_a_node_without_a_ps_or_a_run_is_not_waited_for(tmp_path: Path) -> None:
    assert _wait_script(tmp_path, wait_s=600).wait(timeout=60) == 0
