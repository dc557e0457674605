"""Each ServeConfig field is declared once (shield_ps.flags): the parser's defaults are the dataclass's, the hash of
existing configurations is unchanged (golden values computed before the declarations moved), enums stay enums until
they are written out, and the checks across fields run for a configuration built in code too (pure: nothing is
started)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from byzantine.attacks import Attack
from byzantine.byzantine_sets import ByzantineChoice, DetoxAttack
from byzantine.placement import Scheme
from byzantine.vote import VoteMode
from shield_ps.cli import build_parser, main
from shield_ps.cli.serve import config_from_args
from shield_ps.config import DEFAULT_MAX_STEPS, OPERATIONAL_FIELDS, ServeConfig, ShortStep
from shield_ps.errors import CONFIG_ERRORS, ConfigError
from shield_ps.flags import flag_of, option_names
from shield_ps.job import resolve_job
from shield_ps.phases.deadlines import Deadlines

CLI_FIELDS = [f for f in dataclasses.fields(ServeConfig) if flag_of(f).cli]

#: Computed on main (b29cdb0) before the fields were declared with flag(): config_hash and the SHA-256 of the sorted
#: to_dict JSON, per configuration below. Checkpoints carry these hashes; they must never change.
GOLDEN = {
    "default": ("8fe5f69b0f7cd6b4", "91e203908c93e121"),
    "a": ("757dbbbd23a2e1cd", "1a4ee37b6007fe5c"),
    "b": ("2187058dc015ebd5", "36996491ee3f2830"),
    "c": ("df53af4241e549ba", "02c3181508c8115b"),
}
CONFIGS = {
    "default": {},
    "a": dict(scheme="rama_two", workers=25, replication=5, aggregator="multi-krum", byzantine=3, attack="alie",
              alie_z="auto", vote="tolerant", vote_rtol=1e-4, seed=7, short_step="lower-s", lr=0.05, momentum=0.5),
    "b": dict(scheme="detox", byzantine=2, attack="rev-grad", byzantine_gen="fixed", fixed_byzantine=(1, 4),
              detox_attack="whole-group", vote="exact", batch_size=60, synthetic_d=1000, relay="off", port=0,
              max_steps=10),
    "c": dict(network="LeNet-relu", dataset="Cifar10", network_digest="abc", dataset_digest="def", vote_tol=0.01,
              codec="raw", local_agents=15, local_agent_env=("0:X=1",), buckets=3, agg_s=1, agg_m=4, extra={"k": 1}),
}
#: Fields added after the golden values: left out of the serialisation compared (an older checkpoint has no such
#: key and reads the default), operational (a resume may change them).
ADDED_AFTER = frozenset({"digest_grace_floor"})
#: The fields a resume could change before they were declared with flag() (main's _OPERATIONAL_FIELDS).
OPERATIONAL_BEFORE = frozenset({
    "host", "port", "data_dir", "train_dir", "resume", "local_agents", "local_agent_env", "local_agent_device", "view",
    "eval_freq", "epochs", "max_steps", "codec", "codec_level", "threads", "gather_timeout", "upload_timeout",
    "join_timeout", "checkpoint_keep", "min_bandwidth", "hedge_factor", "hedge_floor", "handshake_timeout",
    "max_preauth", "max_preauth_per_host", "max_skipped_steps", "agent_processes", "agg_threads", "streaming_vote",
    "relay", "relay_roots", "relay_fanout", "relay_latency",
})


def _args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize("field", CLI_FIELDS, ids=lambda f: f.name)
def test_the_parsers_default_is_the_declared_default(field: dataclasses.Field) -> None:
    value = getattr(_args(), field.name)
    if flag_of(field).derived:  # the configuration derives it (from the scheme, --local-agents, the clock)
        assert value is None
    else:
        assert value == field.default or (value == [] and field.default == ())


def test_serve_with_no_flags_resolves_to_the_default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = config_from_args(_args("--train-dir", "runs/default"))
    assert config == ServeConfig(max_steps=DEFAULT_MAX_STEPS)


@pytest.mark.parametrize("field", CLI_FIELDS, ids=lambda f: f.name)
def test_every_field_flag_reaches_its_field(field: dataclasses.Field) -> None:
    """Each option string of a field sets that field (a value other than the default where one can be written)."""
    declared = flag_of(field)
    for name in option_names(field):
        args = _args(name) if declared.switch else None
        if args is None:
            text = _OTHER_VALUES.get(field.name)
            if text is None:
                continue
            args = _args(name, text)
            assert getattr(args, field.name) != (None if declared.derived else field.default), name
        else:
            assert getattr(args, field.name) is True


_OTHER_VALUES = {
    "host": "0.0.0.0", "port": "0", "local_agents": "3", "agent_processes": "2", "local_agent_env": "0:X=1",
    "threads": "2", "local_agent_device": "cuda", "scheme": "draco_lite", "workers": "9", "replication": "5",
    "rama_m": "2", "network": "ResNet18", "dataset": "Cifar10", "data_dir": "/d", "batch_size": "30", "lr": "0.5",
    "momentum": "0.5", "gamma": "0.5", "lr_step": "9", "epochs": "2", "max_steps": "7", "eval_freq": "3",
    "train_dir": "x", "seed": "4", "synthetic_d": "100", "checkpoint_keep": "9", "aggregator": "krum",
    "buckets": "2", "agg_s": "1", "agg_m": "2", "agg_threads": "2", "byzantine": "2", "attack": "rev_grad",
    "attack_c": "3", "alie_z": "auto", "byzantine_gen": "random", "fixed_byzantine": "1,2",
    "detox_attack": "benign", "vote": "exact", "vote_rtol": "0.1", "vote_tol": "0.1", "short_step": "lower-s",
    "max_skipped_steps": "3", "cc_tau": "2", "cc_iters": "3", "codec": "lz4", "codec_level": "3",
    "gather_timeout": "9", "upload_timeout": "9", "min_bandwidth": "9", "hedge_factor": "9", "hedge_floor": "9",
    "streaming_vote": "off", "relay": "off", "relay_roots": "9", "relay_fanout": "9", "relay_latency": "9",
    "handshake_timeout": "9", "max_preauth": "9", "max_preauth_per_host": "9", "join_timeout": "9",
    "digest_grace_floor": "9",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_config_hash_and_serialisation_are_unchanged(name: str) -> None:
    config = ServeConfig(**CONFIGS[name])  # type: ignore[arg-type]  # strings, as older code and checkpoints give
    data = config.to_dict()
    older = {key: value for key, value in data.items() if key not in ADDED_AFTER}
    serialised = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()[:16]
    assert (config.config_hash(), serialised) == GOLDEN[name]
    assert ServeConfig.from_dict(json.loads(json.dumps(data))) == config


def test_operational_fields_are_derived_from_the_declarations_unchanged() -> None:
    assert OPERATIONAL_FIELDS == OPERATIONAL_BEFORE | ADDED_AFTER


def test_vote_arrives_as_the_enum_and_is_written_as_its_string() -> None:
    config = config_from_args(_args("--train-dir", "x", "--vote", "exact"))
    assert config.vote is VoteMode.EXACT and type(config.vote) is VoteMode
    assert config_from_args(_args("--train-dir", "x")).vote is VoteMode.AUTO
    assert config.to_dict()["vote"] == "exact" and type(config.to_dict()["vote"]) is str


def test_enum_fields_stay_enums_from_the_cli_from_dict_and_code() -> None:
    argv = ("--train-dir", "x", "--approach", "draco_lite", "--mode", "mean", "--err-mode", "rev_grad",
            "--worker-fail", "2", "--byzantine-gen", "hard_coded", "--detox-attack", "whole_group",
            "--short-step", "lower-s")
    config = config_from_args(_args(*argv))
    expected = (Scheme.DETOX, Attack.REV_GRAD, ByzantineChoice.WORST, DetoxAttack.WHOLE_GROUP, ShortStep.LOWER_S)
    for built in (config, ServeConfig.from_dict(config.to_dict())):
        assert (built.scheme, built.attack, built.byzantine_gen, built.detox_attack, built.short_step) == expected
    assert config.to_dict()["attack"] == "rev-grad" and ServeConfig().attack is None
    assert ServeConfig.from_dict({"attack": "none"}).attack is None and ServeConfig().to_dict()["attack"] == "none"


def test_an_unknown_enum_string_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="vote: invalid choice 'majority' .*auto, exact, tolerant"):
        ServeConfig.from_dict({"vote": "majority"})


def test_original_hidden_flags_still_act() -> None:
    config = config_from_args(_args("--train-dir", "x", "--lis-simulation", "simulate", "--adversarial", "-5"))
    assert config.attack is Attack.ALIE and config.attack_c == 5.0


def test_checks_across_fields_run_for_a_config_built_in_code() -> None:
    bad = {
        "needs --byzantine-gen fixed": dict(fixed_byzantine=(1,)),
        r"--momentum must be in \[0, 1\)": dict(momentum=1.5),
        "--agent-device applies to --local-agents": dict(local_agent_device="cuda"),
        "--agent-processes applies to --local-agents": dict(agent_processes=2),
        "valid for mols": dict(workers=16),
        "local-agent-env": dict(local_agents=2, local_agent_env=("junk",)),
    }
    for message, changes in bad.items():
        config = ServeConfig(max_steps=1, **changes)  # type: ignore[arg-type]
        with pytest.raises(CONFIG_ERRORS, match=message):  # ConfigError, or the placement's own error
            resolve_job(config)


def test_deadlines_come_from_the_typed_config() -> None:
    deadlines = Deadlines.from_config(ServeConfig(relay_latency=3.5, min_bandwidth=2.0, upload_timeout=4.0))
    assert (deadlines.relay_latency, deadlines.min_bandwidth, deadlines.latency) == (3.5, 2e6, 4.0)
    assert Deadlines(1.0, 1.0, 1.0, 1.0, 1.0).relay_latency == ServeConfig().relay_latency


@pytest.mark.parametrize("argv, allowed", [
    (["--vote", "x"], "choose from auto, exact, tolerant"),
    (["--attack", "x"], "choose from none, "),
    (["--streaming-vote", "x"], "choose from on, off"),
    (["--relay", "x"], "choose from 'on', 'off'"),
    (["--port", "70000"], "0..65535"),
    (["--epochs", "1", "--max-steps", "2"], "not allowed with argument"),
])
def test_bad_values_exit_2_saying_what_is_allowed(argv: list[str], allowed: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", *argv])
    assert exited.value.code == 2 and allowed in capsys.readouterr().err


def test_a_contradiction_between_flags_exits_2_before_anything_starts(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["serve", "--train-dir", str(run), "--fixed-byzantine", "1,2"]) == 2
    assert "--fixed-byzantine needs --byzantine-gen fixed" in capsys.readouterr().err and not run.exists()
