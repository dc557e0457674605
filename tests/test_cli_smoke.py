"""The three console scripts start and reject bad input with a one-line error."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["shield_ps.cli", "shield_agent.cli", "shield_ops.cli"])
def test_help_exits_zero(module: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


@pytest.mark.parametrize("module,prog", [("shield_ps.cli", "shield-ps"), ("shield_agent.cli", "shield-agent"),
                                         ("shield_ops.cli", "shield-ops")])
def test_version(module: str, prog: str) -> None:
    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    name, version = result.stdout.split()
    assert name == prog and version[0].isdigit()


def test_unknown_subcommand_is_one_line_error() -> None:
    result = subprocess.run([sys.executable, "-m", "shield_ps.cli", "frobnicate"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid choice" in result.stderr
