"""The live view of a real local cluster (``shield-ps serve --local-agents 3``) in tmux, its screen captured."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runtime_helpers import MNIST_DIR, REPO, TOKEN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux (Debian package) is not installed"),
    pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="local MNIST data missing"),
]


def _tmux(socket: str, *args: str) -> str:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=30).stdout


def test_live_view_of_a_local_cluster(tmp_path: Path) -> None:
    socket = f"shield-cluster-view-{os.getpid()}"
    serve = [sys.executable, "-m", "shield_ps.cli", "serve", "--local-agents", "3", "--scheme", "detox",
             "--workers", "3", "--replication", "3", "--max-steps", "40", "--eval-freq", "20", "--port", "0",
             "--token", TOKEN, "--data-dir", str(MNIST_DIR), "--train-dir", str(tmp_path / "run"),
             "--join-timeout", "180"]
    command = f"{shlex.join(serve)}; echo EXIT=$?; sleep 300"
    subprocess.run(["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", "ps", "-x", "100", "-y",
                    "30", "-c", str(REPO), command], check=True, timeout=30,
                   env={**os.environ, "TERM": "xterm-256color"})
    screens: list[str] = []
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and len(screens) < 5000:
            screen = _tmux(socket, "capture-pane", "-p", "-t", "ps")
            screens.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.2)
    finally:
        _tmux(socket, "kill-server")
    final = screens[-1]
    assert "EXIT=0" in final, final
    training = [s for s in screens if "running ─╯" in s and "step " in s]
    assert training, "never saw the live panel during training:\n" + final
    panel = training[-1]
    assert panel.count("╭─ shield ") == 1, "the panel must be redrawn in place"
    assert "detox" in panel and "K=3" in panel
    assert all(len(line) <= 100 for line in panel.splitlines())
    assert "run summary" in final and "finished: completed" in final
