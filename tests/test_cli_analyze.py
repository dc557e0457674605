"""``shield-ps analyze``: JSON and table output, --byzantine parsing, one-line errors with exit code 2."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from shield_ps.cli.analyze import byzantine_counts


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shield_ps.cli", "analyze", *args], capture_output=True, text=True,
                          timeout=120)


def test_json_document() -> None:
    result = run_cli("--scheme", "mols", "--workers", "15", "--replication", "3", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["scheme"], doc["K"], doc["f"], doc["l"], doc["r"], doc["ramanujan"]) == ("mols", 15, 25, 5, 3, True)
    assert abs(doc["mu1"] - 1 / 3) < 1e-9 and abs(doc["sigma2"] - 5 ** 0.5) < 1e-9
    assert [row["q"] for row in doc["rows"]] == list(range(1, 8)), "default q = 1 .. (K-1)//2"
    assert [row["c_max"] for row in doc["rows"]] == [0, 1, 3, 5, 8, 12, 14]
    assert all(row["exact"] and row["upper_bound"] == row["c_max"] for row in doc["rows"])
    assert doc["rows"][2]["worst_set"] == [0, 5, 11]


def test_ramanujan_case_two_with_m_and_alias() -> None:
    result = run_cli("--scheme", "rama_two", "-K", "25", "-r", "5", "--rama-m", "10", "--byzantine", "3,5", "--format",
                     "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["f"], doc["l"]) == (50, 10)
    assert [(row["q"], row["c_max"]) for row in doc["rows"]] == [(3, 2), (5, 4)], "every point carries 2 files"
    alias = run_cli("--scheme", "draco-lite", "-K", "9", "-r", "3", "-q", "4", "--format", "json")
    assert json.loads(alias.stdout)["scheme"] == "detox"
    assert json.loads(alias.stdout)["rows"][0]["c_max"] == 2


def test_table_output() -> None:
    result = run_cli("--scheme", "mols", "--workers", "21", "--replication", "3", "--byzantine", "2-3")
    assert result.returncode == 0, result.stderr
    assert "mols" in result.stdout and "c_max" in result.stdout and "0 7 15" in result.stdout


def test_time_limit_marks_answers_not_exact() -> None:
    result = run_cli("--scheme", "mols", "-K", "35", "-r", "5", "-q", "16", "--time-limit", "0.05", "--format", "json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["rows"][0]
    assert row["exact"] is False and row["c_max"] <= row["upper_bound"]


@pytest.mark.parametrize("args,fragment", [
    (("--scheme", "mols", "--workers", "16", "--replication", "3"), "K=16, r=3 gives l=5.33"),
    (("--scheme", "mols", "--workers", "15", "--replication", "3", "--byzantine", "2-x"), "range a-b"),
    (("--scheme", "mols", "--workers", "15", "--replication", "3", "--byzantine", "7-2"), "a <= b"),
    (("--scheme", "mols", "--workers", "15", "--replication", "3", "--byzantine", "20"), "at most K=15"),
    (("--scheme", "mols", "--workers", "15", "--replication", "3", "--time-limit", "0"), "positive"),
    (("--scheme", "nope", "--workers", "15", "--replication", "3"), "choose from"),
    (("--scheme", "mols", "--workers", "15"), "required"),
    (("--scheme", "rama_two", "--workers", "25", "--replication", "5", "--rama-m", "7"), "multiple of s = 5"),
])
def test_bad_flags_one_line_exit_2(args: tuple[str, ...], fragment: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_byzantine_counts_parsing() -> None:
    assert byzantine_counts("5") == [5]
    assert byzantine_counts("2-4") == [2, 3, 4]
    assert byzantine_counts("2,4,6") == [2, 4, 6]
    assert byzantine_counts("6,2-3,3") == [2, 3, 6]
    for bad in ("", "a", "3-", "-3", "4-2", "1,,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            byzantine_counts(bad)
