"""The live view in a real terminal: a paced synthetic run under tmux (80x24), its screen captured and read.

The lead's end-to-end variant (a short local cluster under ``shield-ps serve``) belongs with the runtime's tests.
"""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.tmux_helpers import tmux_screens

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux (Debian package) is not installed")

REPO = Path(__file__).resolve().parents[1]


def test_live_view_under_tmux_draws_in_place_and_ends_with_a_summary() -> None:
    command = (f"{shlex.quote(sys.executable)} -m shield_ps.view --fake --steps 30 --workers 15 --pace-ms 80; "
               "echo EXIT=$?")
    screens = tmux_screens(command, cwd=REPO, width=80, height=24, timeout=90, max_screens=2000, interval=0.1)
    final = screens[-1]
    assert "EXIT=0" in final, final
    running = [s for s in screens if "running ─╯" in s]
    assert running, "never saw the panel while the run was going"
    lines = running[-1].splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert any(line.startswith("╭─ shield ") for line in lines)
    assert any("step " in line and "eta" in line for line in lines)
    assert running[-1].count("╭─ shield ") == 1, "the panel must be redrawn in place, not scrolled"
    assert "run summary" in final and "finished: completed" in final and "30 in 0:00:" in final
    assert "lying        3 (x" in final and "outvoted     " in final and "checkpoints  ok, last at step 30" in final
    assert any(" 3 done" in line and "!" in line for line in lines), "the forger's count of proven lies"
