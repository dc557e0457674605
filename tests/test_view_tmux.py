"""The live view in a real terminal: a paced synthetic run under tmux (80x24), its screen captured and read.

The lead's end-to-end variant (a short local cluster under ``shield-ps serve``) belongs with the runtime's tests.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux (Debian package) is not installed")

REPO = Path(__file__).resolve().parents[1]


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=30).stdout


def test_live_view_under_tmux_draws_in_place_and_ends_with_a_summary() -> None:
    socket = f"shield-view-test-{os.getpid()}"
    command = (f"{shlex.quote(sys.executable)} -m shield_ps.view --fake --steps 30 --workers 15 --pace-ms 80; "
               "echo EXIT=$?; sleep 120")
    env = {**os.environ, "TERM": "xterm-256color"}
    subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "view", "-x", "80", "-y",
                    "24", "-c", str(REPO), command], check=True, timeout=30, env=env)
    screens: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and len(screens) < 2000:
            screen = _tmux(socket, "capture-pane", "-p", "-t", "view")
            screens.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.1)
    finally:
        _tmux(socket, "kill-server")
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
