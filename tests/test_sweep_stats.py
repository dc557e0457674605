"""Seeds as an axis of the sweep's results: intervals, drops paired with the q = 0 control, the tests between schemes
and the CSV's three new columns, on hand-made rows (pure; no run)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from scipy import stats

from shield_ps.sweep.report import points_markdown
from shield_ps.sweep.results import RunRow, write_csv
from shield_ps.sweep.stats import (
    compare_schemes,
    holm,
    mean_ci95,
    paired_p,
    summarize_points,
    welch_p,
    with_seed_columns,
)

OLD_COLUMNS = ["run", "scheme", "aggregator", "attack", "q", "seed", "status", "steps", "final_top1", "best_top1",
               "final_loss", "corrupted_frac", "cmax_frac", "median_step_s", "bytes_in_per_step",
               "bytes_out_per_step", "wall_s"]


def row(scheme: str, attack: str, q: int, seed: int, top1: float | None, status: str = "completed") -> RunRow:
    return RunRow(f"{scheme}-{attack}-q{q}-seed{seed}", scheme, "coord-median", attack, q, seed, status,
                  final_top1=top1, corrupted_frac=0.1 * q)


#: controls of seeds 0-3; baseline loses 10, 12, 8, 10 points at q = 4; mols 1, 2, 0, 1 (seed 3's run failed)
ROWS = [
    row("baseline", "none", 0, 0, 0.90), row("baseline", "none", 0, 1, 0.92), row("baseline", "none", 0, 2, 0.88),
    row("baseline", "none", 0, 3, 0.91),
    row("mols", "none", 0, 0, 0.89), row("mols", "none", 0, 1, 0.90), row("mols", "none", 0, 2, 0.86),
    row("mols", "none", 0, 3, 0.88),
    row("baseline", "alie", 4, 0, 0.80), row("baseline", "alie", 4, 1, 0.80), row("baseline", "alie", 4, 2, 0.80),
    row("baseline", "alie", 4, 3, 0.81),
    row("mols", "alie", 4, 0, 0.88), row("mols", "alie", 4, 1, 0.88), row("mols", "alie", 4, 2, 0.86),
    row("mols", "alie", 4, 3, None, "failed: interrupted"),
]


def test_mean_and_95_interval_are_students_t() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.30265272975 / math.sqrt(3), rel=1e-10)  # t(0.975, 2)
    assert mean_ci95([0.5]) == (0.5, None) and mean_ci95([]) == (None, None)


def test_seed_columns_pair_each_point_with_its_control() -> None:
    out = {r.run: r for r in with_seed_columns(ROWS)}
    base = out["baseline-alie-q4-seed1"]
    assert base.top1_mean == pytest.approx(0.8025)
    assert base.top1_ci95 == pytest.approx(mean_ci95([0.80, 0.80, 0.80, 0.81])[1])
    assert base.drop_vs_control == pytest.approx((0.10 + 0.12 + 0.08 + 0.10) / 4)
    mols = out["mols-alie-q4-seed0"]
    assert mols.top1_mean == pytest.approx((0.88 + 0.88 + 0.86) / 3)  # the failed seed 3 does not count
    assert mols.drop_vs_control == pytest.approx((0.01 + 0.02 + 0.00) / 3)  # only seeds both completed
    assert out["mols-alie-q4-seed3"].drop_vs_control == mols.drop_vs_control  # a point's value on each of its rows
    control = out["mols-none-q0-seed2"]
    assert control.drop_vs_control is None and control.top1_mean == pytest.approx(0.8825)


def test_results_csv_gains_exactly_three_columns(tmp_path: Path) -> None:
    path = write_csv(with_seed_columns(ROWS), tmp_path / "results.csv")
    reader = csv.DictReader(path.open())
    assert reader.fieldnames == OLD_COLUMNS + ["top1_mean", "top1_ci95", "drop_vs_control"]
    first = next(reader)
    assert first["drop_vs_control"] == "" and float(first["top1_mean"]) == pytest.approx(0.9025)


def test_point_drops_have_intervals_and_a_paired_test() -> None:
    points = {(s.scheme, s.attack, s.q): s for s in summarize_points(ROWS)}
    base = points[("baseline", "alie", 4)]
    drops = [0.10, 0.12, 0.08, 0.10]
    assert (base.seeds, base.drop_seeds) == (4, 4)
    assert base.drop_mean == pytest.approx(0.10) and base.drop_ci95 == pytest.approx(mean_ci95(drops)[1])
    assert base.drop_p == pytest.approx(stats.ttest_1samp(drops, 0.0).pvalue)
    assert points[("baseline", "none", 0)].drop_mean is None


def test_tests_between_schemes_and_holms_correction() -> None:
    a, b = [0.10, 0.12, 0.08], [0.01, 0.02, 0.00]
    assert paired_p(a, b) == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert paired_p([0.1, 0.2], [0.0, 0.1]) == 0.0 and paired_p([0.1], [0.0]) is None  # equal differences
    assert holm([0.01, 0.04, 0.03, 0.2]) == [True, False, False, False]
    assert holm([0.01, 0.012, None]) == [True, True, None]
    [comparison] = compare_schemes(ROWS)
    assert (comparison.a, comparison.b, comparison.seeds) == ("baseline", "mols", 3)  # seeds both completed
    assert comparison.diff_mean == pytest.approx(0.09)
    assert comparison.paired_p == pytest.approx(stats.ttest_rel(a, b).pvalue) and comparison.significant
    text = points_markdown(summarize_points(ROWS), [comparison])
    assert "| coord-median | alie | 4 | baseline vs mols | 3 | +9.0 ± " in text
    assert "**significant**: mols loses less" in text


def test_a_difference_within_the_seed_noise_is_called_noise() -> None:
    rows = [row(s, "none", 0, seed, 0.9) for s in ("detox", "mols") for seed in range(3)]
    rows += [row("detox", "alie", 2, seed, v) for seed, v in enumerate((0.89, 0.91, 0.88))]
    rows += [row("mols", "alie", 2, seed, v) for seed, v in enumerate((0.90, 0.88, 0.90))]
    [comparison] = compare_schemes(rows)
    assert comparison.significant is False and comparison.paired_p > 0.05
    assert "not significant (within seed noise)" in points_markdown(summarize_points(rows), [comparison])
