"""The live view of a real local cluster (``shield-ps serve --local-agents 3``) in tmux, its screen captured."""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.runtime_helpers import MNIST_DIR, REPO, TOKEN
from tests.tmux_helpers import tmux_screens

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux (Debian package) is not installed"),
    pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="local MNIST data missing"),
]


def test_live_view_of_a_local_cluster(tmp_path: Path) -> None:
    serve = [sys.executable, "-m", "shield_ps.cli", "serve", "--local-agents", "3", "--scheme", "detox",
             "--workers", "3", "--replication", "3", "--max-steps", "40", "--eval-freq", "20", "--port", "0",
             "--token", TOKEN, "--data-dir", str(MNIST_DIR), "--train-dir", str(tmp_path / "run"),
             "--join-timeout", "180"]
    screens = tmux_screens(f"{shlex.join(serve)}; echo EXIT=$?", cwd=REPO, width=100, height=30, timeout=400)
    final = screens[-1]
    assert "EXIT=0" in final, final
    training = [s for s in screens if "running ─╯" in s and "step " in s]
    assert training, "never saw the live panel during training:\n" + final
    panel = training[-1]
    assert panel.count("╭─ shield ") == 1, "the panel must be redrawn in place"
    assert "detox" in panel and "K=3" in panel
    assert all(len(line) <= 100 for line in panel.splitlines())
    assert "run summary" in final and "finished: completed" in final
    assert "lying        none" in final and "outvoted     none" in final  # honest agents: nobody lies or is outvoted
    assert "checkpoints  ok, last at step 40" in final and "metrics      complete" in final
