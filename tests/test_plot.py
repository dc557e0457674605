"""``shield-ps plot``: two small runs drawn to a PNG of the expected size, with its panels really drawn."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shield_ps.cli import main
from shield_ps.plot import PHASE_COLORS, _smooth, curves_from_events, load_curves
from shield_ps.view.fake import fake_run

mpimg = pytest.importorskip("matplotlib.image", reason="matplotlib is the optional [plot] extra")


def _write_run(directory: Path, events: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "metrics.jsonl", "w") as fh:
        for event in events:
            fh.write(json.dumps(event) + "\n")
    return directory


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [_write_run(root / "mols-alie", list(fake_run(steps=60, seed=0, eval_every=10))),
            _write_run(root / "baseline-alie", list(fake_run(steps=40, seed=1, eval_every=10, step_s=0.8)))]


def _has_color(image, hex_color: str) -> bool:
    rgb = [int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    return bool((abs(image[:, :, :3] - rgb).max(axis=2) < 0.02).any())


def test_plot_two_runs_to_a_png_of_the_expected_size(runs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "curves.png"
    assert main(["plot", str(runs[0]), str(runs[1] / "metrics.jsonl"), "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    image = mpimg.imread(out)
    assert image.shape[:2] == (450, 1500)
    assert image.std() > 0.05
    for phase in ("compute", "gather", "broadcast"):
        assert _has_color(image, PHASE_COLORS[phase]), phase


def test_size_and_dpi_set_the_pixels(runs: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "small.png"
    assert main(["plot", str(runs[0]), "-o", str(out), "--size", "8x3", "--dpi", "50", "--label", "mine",
                 "--title", "one run"]) == 0
    assert mpimg.imread(out).shape[:2] == (150, 400)


def test_a_resumed_step_overwrites_the_earlier_one() -> None:
    events = [{"kind": "step", "step": 0, "loss": 2.0, "times": {"compute": 1.0}},
              {"kind": "step", "step": 1, "loss": 9.0, "times": {"compute": 3.0}},
              {"kind": "job", "resumed": True},
              {"kind": "step", "step": 1, "loss": 1.0, "times": {"compute": 2.0}},
              {"kind": "eval", "step": 2, "top1": 0.5}, {"kind": "eval", "step": "x", "top1": 0.9}]
    curves = curves_from_events(events, "r")
    assert curves.loss == {0: 2.0, 1: 1.0} and curves.top1 == {2: 0.5}
    assert curves.timed_steps == 2 and curves.phase_means["compute"] == 1.5


def test_smooth_is_a_trailing_mean() -> None:
    assert _smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert _smooth([4.0], 3) == [4.0]


def test_bad_input_is_a_one_line_error(runs: list[Path], tmp_path: Path, capsys) -> None:
    empty = _write_run(tmp_path / "empty", [{"kind": "job", "time": 0.0}])
    assert main(["plot", str(empty)]) == 2
    assert "no step or eval events" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "absent")]) == 2
    assert "no run metrics" in capsys.readouterr().err
    assert main(["plot", str(runs[0]), "--label", "a", "--label", "b"]) == 2
    assert "--label" in capsys.readouterr().err
    assert load_curves(runs[0]).label == "mols-alie"


def test_missing_matplotlib_says_how_to_install_it(runs: list[Path], tmp_path: Path) -> None:
    code = ("import sys; sys.modules['matplotlib'] = None; from shield_ps.cli import main; "
            f"sys.exit(main(['plot', {str(runs[0])!r}, '-o', {str(tmp_path / 'x.png')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "shield-ps plot: error: plots need matplotlib: pip install 'shield[plot]'"
    assert not (tmp_path / "x.png").exists()
