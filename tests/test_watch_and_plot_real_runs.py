"""Two small real runs: one watched live by ``shield-ps watch`` (an observer on 127.0.0.1), both then plotted."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shield_ps.cli import main
from tests.runtime_helpers import MNIST_DIR, TOKEN, Process, events, run_serve, start_serve

mpimg = pytest.importorskip("matplotlib.image", reason="matplotlib is the optional [plot] extra")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="local MNIST data missing"),
]

FLAGS = ["--scheme", "detox", "--workers", "3", "--replication", "3", "--local-agents", "3", "--eval-freq", "10"]


def test_watch_a_real_run_then_plot_it_beside_another(tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    ps, port = start_serve(watched, *FLAGS, "--max-steps", "150")
    watchers = [Process([sys.executable, "-m", "shield_ps.cli", "watch", f"127.0.0.1:{port}", "--token", TOKEN,
                         "--plain"], tmp_path / f"watch{i}.log") for i in range(2)]
    try:
        assert ps.wait(timeout=400) == 0, ps.output()[-3000:]
        for watcher in watchers:
            assert watcher.wait(timeout=60) == 0, watcher.output()[-2000:]
    finally:
        for proc in watchers + [ps]:
            proc.stop()
    for watcher in watchers:  # several watchers, each sees the run through to its summary
        out = watcher.output()
        assert "job detox K=3" in out and "eval step" in out and "summary: run" in out and "completed" in out
        assert "watch: the run ended" in out
        # the summary's categories reach a watcher: honest agents, nobody lying or outvoted; every checkpoint written
        assert "summary: lying       none" in out and "summary: outvoted    none" in out
        assert "summary: checkpoints ok, last at step 150" in out and "summary: metrics     complete" in out

    other = tmp_path / "other"
    assert run_serve(other, *FLAGS, "--max-steps", "20", "--aggregator", "mean").returncode == 0
    assert events(other, "eval") and events(watched, "eval")

    png = tmp_path / "curves.png"
    assert main(["plot", str(watched), str(other), "-o", str(png)]) == 0
    image = mpimg.imread(png)
    assert image.shape[:2] == (450, 1500) and image.std() > 0.05
