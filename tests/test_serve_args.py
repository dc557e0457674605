"""``shield-ps serve`` arguments resolved as a user writes them: per-scheme K and r, the join deadline, checkpoint
retention, agent processes, and ``--resume`` without ``--train-dir`` (pure: nothing is started)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shield_ps.cli import build_parser
from shield_ps.cli.serve import config_from_args
from shield_ps.config import SCHEME_DEFAULTS, ServeConfig
from shield_ps.errors import ConfigError


def _config(*argv: str) -> ServeConfig:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


@pytest.mark.parametrize("scheme", sorted(SCHEME_DEFAULTS))
def test_each_scheme_alone_gets_the_papers_configuration(scheme: str) -> None:
    config = _config("--scheme", scheme, "--train-dir", "unused")
    assert (config.workers, config.replication) == SCHEME_DEFAULTS[scheme]
    assert SCHEME_DEFAULTS["rama_two"] == (25, 5) and SCHEME_DEFAULTS["baseline"][1] == 1


def test_flags_given_override_the_scheme_defaults() -> None:
    config = _config("--scheme", "rama_two", "--workers", "9", "--replication", "3", "--train-dir", "unused")
    assert (config.workers, config.replication) == (9, 3)


def test_join_deadline_is_generous_for_local_agents_and_flags_reach_the_config() -> None:
    assert _config("--train-dir", "x").join_timeout == 120
    local = _config("--train-dir", "x", "--local-agents", "15", "--agent-processes", "3", "--keep-checkpoints", "7")
    assert local.join_timeout == 300 and local.agent_processes == 3 and local.checkpoint_keep == 7
    assert _config("--train-dir", "x", "--local-agents", "15", "--join-timeout", "9").join_timeout == 9


def test_agent_processes_without_local_agents_is_refused() -> None:
    with pytest.raises(ConfigError, match="--agent-processes applies to --local-agents"):
        _config("--train-dir", "x", "--agent-processes", "2")


def test_resume_without_train_dir_picks_the_newest_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("20260101-000000", "20260102-000000"):
        (tmp_path / "runs" / name / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "20260103-000000").mkdir()  # no checkpoints: nothing to resume there
    assert _config("--resume").train_dir == "runs/20260102-000000"


def test_resume_without_any_run_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="resumes the newest run under runs/"):
        _config("--resume")
