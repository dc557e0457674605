"""Run a command in a detached tmux session of a given size and collect its screens until it prints ``EXIT=``."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=30).stdout


def tmux_screens(command: str, *, cwd: Path, width: int, height: int, timeout: float,
                 max_screens: int = 5000, interval: float = 0.2) -> list[str]:
    """Screens captured every ``interval`` s while ``command`` runs (it must end with ``echo EXIT=$?``); the tmux
    server is always killed. The last screen is the one that shows ``EXIT=``, or the last one before ``timeout``."""
    socket = f"shield-test-{os.getpid()}-{time.monotonic_ns()}"
    subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "test", "-x", str(width),
                    "-y", str(height), "-c", str(cwd), f"{command}; sleep 300"], check=True, timeout=30,
                   env={**os.environ, "TERM": "xterm-256color"})
    screens: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(screens) < max_screens:
            screens.append(_tmux(socket, "capture-pane", "-p", "-t", "test"))
            if "EXIT=" in screens[-1]:
                break
            time.sleep(interval)
    finally:
        _tmux(socket, "kill-server")
    return screens
