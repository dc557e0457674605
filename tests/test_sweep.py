"""``shield-ps sweep``: grid validation (pure), and one real two-configuration sweep of local clusters on MNIST that
checks the CSV, the table, the plots, the measured corrupted fraction and that a second invocation skips both runs."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from byzantine.aggregators import Aggregator
from byzantine.placement import Scheme
from shield_ps.errors import SweepError
from shield_ps.sweep.grid import PRESETS, Grid, Preset, grid_from_mapping, load_toml
from shield_ps.sweep.results import summarize
from tests.runtime_helpers import MNIST_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shield_ps.cli", "sweep", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_presets_are_the_papers_grids() -> None:
    fig9, fig2 = PRESETS[Preset.FIG9].grid, PRESETS[Preset.FIG2].grid
    assert (fig9.workers, fig9.byzantine, fig9.attacks) == (15, (2,), ("alie",))
    assert fig9.schemes == (Scheme.BASELINE, Scheme.DETOX, Scheme.MOLS) and len(fig9.aggregators) == 3
    assert (fig2.workers, fig2.replication, fig2.byzantine) == (25, 5, (3, 5))
    assert Scheme.RAMA_TWO in fig2.schemes
    # the paper's settings: b = 750 at K = 15 and 1250 at K = 25, ALIE's own z, the original code's lr decay
    assert (fig9.batch_size, fig2.batch_size, fig9.alie_z, fig9.seeds) == (750, 1250, "auto", (0, 1, 2))
    assert (fig9.lr, fig9.gamma, fig9.lr_step, fig9.momentum) == (0.01, 0.96, 15, 0.9)
    samples = {s.scheme: s.config().batch_size // __import__("shield_ps.job").job.resolve_job(s.config()).placement.f
               for s in fig9.runs()[:3]}
    assert samples == {Scheme.BASELINE: 50, Scheme.DETOX: 150, Scheme.MOLS: 30}
    runs = fig9.runs()
    names = [spec.name for spec in runs]
    # 3 schemes x 3 aggregators x 3 seeds at q = 2, and the q = 0 control of each (scheme, aggregator, seed)
    assert len(names) == len(set(names)) == 54
    assert [(s.q, s.attack) for s in runs[:27]] == [(0, "none")] * 27 and {s.q for s in runs[27:]} == {2}
    assert [s.replication for s in runs[:3]] == [1, 3, 3]    # the baseline has no replication
    scaled = PRESETS[Preset.FIG9_SCALED].grid
    assert (scaled.batch_size, scaled.alie_z, scaled.seeds, len(scaled.runs())) == (150, "1.0", (0,), 18)


def test_infeasible_points_say_why() -> None:
    grid = PRESETS[Preset.FIG9].grid
    reasons = {spec.name: spec.infeasible() for spec in grid.runs()}
    assert "n >= 3s+3" in reasons["detox-bulyan-byzshield-alie-q2-seed0"]
    assert reasons["mols-bulyan-byzshield-alie-q2-seed0"] is None


@pytest.mark.parametrize("data,fragment", [
    ({"schemes": ["mols", "draco"]}, "schemes: invalid choice 'draco' (choose from baseline, detox, mols"),
    ({"aggregators": ["median"]}, "aggregators: invalid choice 'median'"),
    ({"attacks": ["alie", "lie"]}, "choose from none, rev-grad"),
    ({"byzantine": [2, -1]}, "byzantine must be integers >= 0"),
    ({"seeds": []}, "seeds must be a non-empty list"),
    ({"max_steps": 0}, "max_steps must be a positive integer"),
    ({"momentum": 1.0}, "momentum must be in [0, 1)"),
    ({"network": "LeNet5"}, "network: invalid choice 'LeNet5' (choose from LeNet, LeNet-relu"),
    ({"workerz": 3}, "unknown sweep keys: workerz (allowed: preset, schemes"),
    ({"preset": "fig10"}, "unknown preset 'fig10' (choose from fig9, fig2, reach, fig9-scaled, fig2-scaled)"),
    ({"attacks": ["alie:x"]}, "attacks: 'alie:x': ALIE z must be a finite number or 'auto', got 'x'"),
    ({"alie_z": "inf"}, "alie_z: ALIE z must be a finite number or 'auto', got 'inf'"),
    ({"controls": "no"}, "controls must be true or false, got 'no'"),
])
def test_grid_validation_names_what_is_allowed(data: dict, fragment: str) -> None:
    with pytest.raises(SweepError) as err:
        grid_from_mapping(data)
    assert fragment in str(err.value)


def test_toml_overrides_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "grid.toml"
    path.write_text('preset = "fig9"\naggregators = ["coord-median"]\nseeds = [0, 1]\nmax_steps = 7\n')
    grid = load_toml(path)
    assert grid.aggregators == (Aggregator.COORD_MEDIAN,) and grid.seeds == (0, 1) and grid.max_steps == 7
    assert grid.workers == 15 and len(grid.runs()) == 12  # 6 points at q = 2 and their 6 controls
    (tmp_path / "bad.toml").write_text("schemes = [mols\n")
    with pytest.raises(SweepError, match="not valid TOML"):
        load_toml(tmp_path / "bad.toml")


def test_summary_of_events_is_hand_checked() -> None:
    spec = Grid(schemes=(Scheme.MOLS,), byzantine=(2,)).runs()[-1]  # [0] is its q = 0 control
    events = [
        {"kind": "step", "step": 0, "loss": 2.0, "files": 25, "files_corrupted": 1, "bytes_in": 100, "bytes_out": 300,
         "times": {"total": 1.0}},
        {"kind": "step", "step": 1, "loss": 1.5, "files": 25, "files_corrupted": 0, "bytes_in": 200, "bytes_out": 500,
         "times": {"total": 3.0}},
        {"kind": "step", "step": 1, "loss": 1.0, "files": 25, "files_corrupted": 1, "bytes_in": 300, "bytes_out": 500,
         "times": {"total": 2.0}},   # a resumed step replaces the earlier one
        {"kind": "eval", "step": 1, "top1": 0.5}, {"kind": "eval", "step": 2, "top1": 0.4},
        {"kind": "summary", "wall_s": 10.0, "reason": "completed"},
    ]
    row = summarize(spec, events, "completed")
    assert (row.steps, row.final_top1, row.best_top1, row.final_loss) == (2, 0.4, 0.5, 1.0)
    assert row.corrupted_frac == pytest.approx(1 / 25) and row.cmax_frac == pytest.approx(1 / 25)  # c_max(2) = 1
    assert (row.median_step_s, row.bytes_in_per_step, row.bytes_out_per_step) == (1.5, 200, 400)


@pytest.mark.parametrize("args,fragment", [
    (("--schemes", "mols,foo"), "argument --schemes: schemes: invalid choice 'foo' (choose from baseline"),
    (("--preset", "fig10"), "argument --preset: invalid choice 'fig10' (choose from "),
    (("--engine", "local"), "argument --engine: invalid choice 'local' (choose from cluster, inprocess)"),
    (("--device", "gpu"), "argument --device: expected cpu, cuda, cuda:N or auto, got 'gpu'"),
    (("--attacks", "alie:big"), "attacks: 'alie:big': ALIE z must be a finite number or 'auto'"),
    (("--byzantine", "2,x"), "argument --byzantine: expected an integer >= 0, got 'x'"),
    (("--momentum", "1.5"), "momentum must be in [0, 1), got 1.5"),
    (("--network", "AlexNet"), "network: invalid choice 'AlexNet'"),
])
def test_bad_flags_exit_2_naming_what_is_allowed(args: tuple[str, ...], fragment: str) -> None:
    done = sweep(*args, "--dry-run")
    assert done.returncode == 2 and fragment in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_data_stops_the_sweep_before_any_run(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    done = sweep("--schemes", "baseline,detox", "--workers", "3", "--data-dir", str(tmp_path / "nowhere"),
                 "--out", str(out), "--plain")
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"shield-ps sweep: error: --data-dir {tmp_path / 'nowhere'} does not exist (pass the "
                           "directory that holds MNIST")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="needs the real MNIST test split")
def test_two_configuration_sweep_writes_table_and_plots_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = ("--schemes", "baseline,detox", "--workers", "3", "--replication", "3", "--aggregators", "coord-median",
            "--attacks", "alie", "--byzantine", "1", "--max-steps", "4", "--eval-freq", "2", "--batch-size", "30",
            "--data-dir", str(MNIST_DIR), "--out", str(out), "--plain", "--run-timeout", "400")
    done = sweep(*args, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    # the q = 0 control of each scheme comes first (added by the sweep), then the attacked points
    assert [(r["scheme"], r["q"], r["attack"]) for r in rows] == [
        ("baseline", "0", "none"), ("detox", "0", "none"), ("baseline", "1", "alie"), ("detox", "1", "alie")]
    baseline, detox = rows[2:]
    for row in rows:
        assert row["status"] == "completed" and row["steps"] == "4"
        assert 0 < float(row["final_top1"]) <= 1 and float(row["best_top1"]) >= float(row["final_top1"])
        assert float(row["bytes_in_per_step"]) > 0 and float(row["median_step_s"]) > 0
        assert float(row["top1_mean"]) == float(row["final_top1"]) and row["top1_ci95"] == ""  # one seed
    # K = 3, q = 1: the baseline's Byzantine worker wins one file of three every step (c_max(1)/f = 1/3); DETOX's
    # one group of three outvotes it (c_max = 0).
    assert float(baseline["corrupted_frac"]) == pytest.approx(1 / 3) == pytest.approx(float(baseline["cmax_frac"]))
    assert float(detox["corrupted_frac"]) == 0 == float(detox["cmax_frac"])
    for attacked, control in ((baseline, rows[0]), (detox, rows[1])):
        assert float(attacked["drop_vs_control"]) == pytest.approx(
            float(control["final_top1"]) - float(attacked["final_top1"]))
    assert float(detox["drop_vs_control"]) == 0  # nothing corrupted: the same training as its control
    assert "baseline" in done.stdout and "final top-1" in done.stdout
    assert (out / "results.md").read_text().count("| completed |") == 4
    assert "| detox | coord-median | alie | 1 | 0.0% | 1 |" in (out / "points.md").read_text()
    for name in ("accuracy.png", "final_top1.png", "drop.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    metrics = out / "runs" / "detox-coord-median-alie-q1-seed0" / "metrics.jsonl"
    before = metrics.stat().st_mtime_ns
    again = sweep(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 skipped" in again.stdout and metrics.stat().st_mtime_ns == before


def test_progress_line_names_the_run_the_counts_and_the_eta() -> None:
    from shield_ps.sweep.runner import Progress
    from shield_ps.sweep.view import describe

    progress = Progress(total=9, done=2, skipped=1, current="mols-coord-median-alie-q2-seed0", step=40, steps=100,
                        eta_s=3725)
    assert describe(progress) == ("runs 3/9 (1 skipped: done before or infeasible) · now "
                                  "mols-coord-median-alie-q2-seed0 step 40/100 · grid ETA 1:02:05")
    assert describe(Progress(total=2, done=2)) == "runs 2/2 · finished"


def test_the_device_reaches_each_engine_and_the_local_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shield_ps.cli import build_parser
    from shield_ps.cli.serve import config_from_args
    from shield_ps.daemon import PSDaemon
    from shield_ps.errors import ConfigError
    from shield_ps.events import EventSink
    from shield_ps.sweep.runner import Engine, SweepRunner

    spec = Grid(schemes=(Scheme.MOLS,), byzantine=(2,)).runs()[-1]
    cluster = SweepRunner(spec.grid, tmp_path, device="cuda").serve_command(spec, resume=False)
    assert cluster[cluster.index("--agent-device") + 1] == "cuda" and "serve" in cluster
    alone = SweepRunner(spec.grid, tmp_path, engine=Engine.INPROCESS, device="cuda:1").serve_command(spec, True)
    assert alone[2:] == ["shield_ps.sweep.engine", "--config", str(tmp_path / "runs" / spec.name / "config.json"),
                         "--device", "cuda:1", "--resume"]
    assert "--device" not in SweepRunner(spec.grid, tmp_path, engine=Engine.INPROCESS).serve_command(spec, False)
    for engine in Engine:
        cmd = SweepRunner(spec.grid, tmp_path, engine=engine, agg_threads=8).serve_command(spec, False)
        assert cmd[cmd.index("--agg-threads") + 1] == "8"
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    env = SweepRunner(spec.grid, tmp_path, engine=Engine.INPROCESS).run_env()
    assert env is not None and env["OPENBLAS_NUM_THREADS"] == "1"
    assert SweepRunner(spec.grid, tmp_path).run_env() is None  # serve's environment is the caller's

    config = config_from_args(build_parser().parse_args(
        ["serve", "--train-dir", str(tmp_path / "run"), "--local-agents", "2", "--agent-device", "CUDA"]))
    assert config.local_agent_device == "cuda"
    with pytest.raises(ConfigError, match="--agent-device applies to --local-agents"):
        config_from_args(build_parser().parse_args(["serve", "--train-dir", "x", "--agent-device", "cuda"]))
    started: list[list[str]] = []

    class Recorder:
        def __init__(self, *args, **kwargs) -> None:
            started.append(list(args[6]))

        def start(self) -> None:
            pass

    monkeypatch.setattr("shield_ps.daemon.LocalAgents", Recorder)
    PSDaemon(config, "t" * 64, EventSink(None), token_file=tmp_path / "token")._start_local_agents(7700)
    assert started == [["--device", "cuda"]]
