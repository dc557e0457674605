"""``shield-ps serve``'s arguments, generated from the :class:`~shield_ps.config.ServeConfig` field declarations
(:mod:`shield_ps.flags`), and the configuration built back from them.

Each field's flag carries its default, help, value type and group, so it is written once. The few options that are
not configuration fields are added here by hand: the cluster token (``--token``, ``--token-file``), the view
(``--plain``, ``--quiet``), and the original ByzShield code's ``--lis-simulation`` and ``--adversarial``, hidden.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from byzantine.attacks import Attack
from shield_ps.config import (
    DEFAULT_MAX_STEPS,
    JOIN_TIMEOUT_LOCAL_S,
    JOIN_TIMEOUT_REMOTE_S,
    SCHEME_DEFAULTS,
    ServeConfig,
)
from shield_ps.errors import ConfigError
from shield_ps.flags import Group, flag_of, option_names
from shield_ps.view import add_view_options

RUNS_DIR = Path("runs")


class _LisSimulation(argparse.Action):
    """Original ``--lis-simulation simulate`` switches the attack to ALIE; any other value leaves it alone."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        if values == "simulate":
            namespace.attack = Attack.ALIE


class _Adversarial(argparse.Action):
    """Original ``--adversarial -100`` is the attack multiplier; ours is c with the sign built in (c = 100)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        namespace.attack_c = -float(values)


def _token_options(group: Any) -> None:
    group.add_argument("--token", help="cluster token (visible to other local users in the process list: prefer "
                       "--token-file)")
    group.add_argument("--token-file", help="file holding the cluster token (default: a fresh random token written "
                       "to RUN/token, readable by you only, and the join command printed)")


#: Options that are not configuration fields, added after the field named by the key (so --help keeps its order).
_AFTER: dict[str, Callable[[Any], None]] = {
    "agent_processes": _token_options,
    "attack": lambda g: g.add_argument("--lis-simulation", action=_LisSimulation, help=argparse.SUPPRESS),
    "attack_c": lambda g: g.add_argument("--adversarial", action=_Adversarial, help=argparse.SUPPRESS),
}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one option per command-line field of ServeConfig (group by group), then the view options."""
    fields = [f for f in dataclasses.fields(ServeConfig) if flag_of(f).cli]
    for group in Group:
        section = parser.add_argument_group(group.value)
        exclusive: dict[str, Any] = {}
        for field in (f for f in fields if flag_of(f).group is group):
            declared = flag_of(field)
            target = section
            if declared.exclusive is not None:
                if declared.exclusive not in exclusive:
                    exclusive[declared.exclusive] = section.add_mutually_exclusive_group()
                target = exclusive[declared.exclusive]
            target.add_argument(*option_names(field), **_argument_options(field))
            if field.name in _AFTER:
                _AFTER[field.name](section)
    add_view_options(parser)


def _argument_options(field: dataclasses.Field[Any]) -> dict[str, Any]:
    declared = flag_of(field)
    options: dict[str, Any] = {"dest": field.name, "help": declared.help}
    if declared.switch:
        return {**options, "action": "store_true"}
    options["default"] = None if declared.derived else field.default
    if declared.repeatable:
        options.update(action="append", default=[])
    for key in ("metavar", "choices"):
        if getattr(declared, key) is not None:
            options[key] = getattr(declared, key)
    if declared.parse is not None:
        options["type"] = declared.parse
    return options


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The configuration the parsed arguments ask for, validated (ConfigError naming what would work)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig) if flag_of(f).cli}
    del values["train_dir"]  # chosen once the configuration is valid: a refused run touches no directory
    default_k, default_r = SCHEME_DEFAULTS[args.scheme.value]
    local = bool(args.local_agents)
    values.update(
        workers=args.workers or default_k, replication=args.replication or default_r,
        max_steps=args.max_steps or (None if args.epochs else DEFAULT_MAX_STEPS),
        join_timeout=args.join_timeout or (JOIN_TIMEOUT_LOCAL_S if local else JOIN_TIMEOUT_REMOTE_S),
        view="plain" if args.plain else "quiet" if args.quiet else "auto")
    config = ServeConfig(**values).validate()
    return config.replace(train_dir=_train_dir(args))


def _train_dir(args: argparse.Namespace) -> str:
    """The run directory; a directory that already holds a run is reused only with --resume (nothing is lost).
    ``--resume`` without ``--train-dir`` picks the newest run under ``runs/``."""
    if args.train_dir is None:
        if args.resume:
            return _newest_run()
        return time.strftime("runs/%Y%m%d-%H%M%S")
    previous = Path(args.train_dir) / "metrics.jsonl"
    if previous.exists() and previous.stat().st_size and not args.resume:
        raise ConfigError(f"{args.train_dir} already holds a run: pass --resume to continue it, or choose another "
                          "--train-dir")
    return str(args.train_dir)


def _newest_run() -> str:
    runs = sorted((p for p in RUNS_DIR.glob("*") if (p / "checkpoints").is_dir()), key=lambda p: p.name)
    if not runs:
        raise ConfigError(f"--resume without --train-dir resumes the newest run under {RUNS_DIR}/, and there is none "
                          "with checkpoints; pass --train-dir RUN")
    logging.getLogger(__name__).warning("--resume: resuming the newest run, %s", runs[-1])
    return str(runs[-1])
