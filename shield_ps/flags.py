"""How a :class:`~shield_ps.config.ServeConfig` field is declared once: its default, its command-line flag, help,
group and value type, and whether ``--resume`` may change it.

:func:`flag` returns a ``dataclasses.field`` whose metadata holds a :class:`Flag`; ``shield-ps serve``'s arguments
are generated from those (:mod:`shield_ps.cli.serve_args`), ``ServeConfig.OPERATIONAL`` (the fields a resume may
change, left out of the configuration hash) is derived from them, and a string given for an enum field (a checkpoint,
a JOB message, a config built in code) is turned into its enum by the same parser the command line uses. The value
types below raise ``argparse.ArgumentTypeError`` with a message saying what is allowed.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wire.cli import non_negative_int, positive_int

Parse = Callable[[str], Any]


class Group(str, enum.Enum):
    """The sections of ``shield-ps serve --help``, in the order they are shown."""

    CLUSTER = "cluster"
    PLACEMENT = "placement"
    TRAINING = "training"
    ROBUSTNESS = "robustness"
    TRANSPORT = "transport and deadlines"


@dataclass(frozen=True)
class Flag:
    """One field's declaration. ``cli``: whether it is a ``shield-ps serve`` flag; ``names``: its option strings
    (default ``--field-name``); ``derived``: the
    flag's own default is None and the configuration derives the value (e.g. from the scheme); ``exclusive``: flags
    sharing this name are mutually exclusive; ``hashed_when_set``: a field added after runs were checkpointed, hashed
    only when not None so that older checkpoints keep their hash; ``none_as``: how None is written out (an enum field
    whose None is a choice of its own, like ``--attack none``)."""

    help: str | None = None
    cli: bool = False
    parse: Parse | None = None
    group: Group | None = None
    operational: bool = False
    names: tuple[str, ...] = ()
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    derived: bool = False
    exclusive: str | None = None
    hashed_when_set: bool = False
    repeatable: bool = False
    switch: bool = False
    none_as: str | None = None


def flag(default: Any, help: str | None = None, *, parse: Parse | None = None, group: Group | None = None,
         operational: bool = False, names: tuple[str, ...] | None = None, cli: bool = True, **more: Any) -> Any:
    """A ServeConfig field with its :class:`Flag`; ``names`` default to ``--field-name`` (``cli=False``: none).
    A tuple default is given to each instance as is (tuples are immutable)."""
    declared = Flag(help=help, cli=cli, parse=parse, group=group, operational=operational, names=names or (),
                    **more)
    return dataclasses.field(default=default, metadata={"flag": declared})


def flag_of(field: dataclasses.Field[Any]) -> Flag:
    declared = field.metadata.get("flag")
    return declared if isinstance(declared, Flag) else Flag()


def option_names(field: dataclasses.Field[Any]) -> tuple[str, ...]:
    """The option strings of a command-line field (its declared names, else ``--field-name``)."""
    return flag_of(field).names or ("--" + field.name.replace("_", "-"),)


# Value types of the flags that wire.cli does not already provide.

def port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535 (0 picks a free port), got {value}")
    return value


def agg_threads(text: str) -> int:
    value = positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"must be in 1..64, got {value}")
    return value


def synthetic_d(text: str) -> int:
    from shield_model.synthetic import MAX_SYNTHETIC_D

    value = positive_int(text)
    if value > MAX_SYNTHETIC_D:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_SYNTHETIC_D}, got {value}")
    return value


def alie_z(text: str) -> str:
    if text == "auto":
        return text
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    return text


def worker_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated worker ids like 0,4,9, got {text!r}") from None


def on_off(text: str) -> bool:
    if text in ("on", "off"):
        return text == "on"
    raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from on, off)")


def network(text: str) -> str:
    """A built-in network name or MODULE:CALLABLE (imported and checked later, once)."""
    from shield_model.errors import ShieldModelError
    from shield_model.zoo.names import network_choice

    try:
        network_choice(text)
    except ShieldModelError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--network ")) from None
    return text


def dataset(text: str) -> str:
    """A built-in dataset name or MODULE:CALLABLE."""
    from shield_model.errors import ShieldModelError
    from shield_model.zoo.names import dataset_choice

    try:
        dataset_choice(text)
    except ShieldModelError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--dataset ")) from None
    return text


def attack_or_none(text: str) -> Any:
    """``none`` (None) or an :class:`~byzantine.attacks.Attack` (its values and the original code's names)."""
    from byzantine.attacks import Attack
    from wire.cli import enum_choice

    if text == "none":
        return None
    aliases = {"rev_grad": Attack.REV_GRAD, "reverse-gradient": Attack.REV_GRAD}
    try:
        return enum_choice(Attack, aliases)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("(choose from ", "(choose from none, ")) from None


for _parse, _name in ((network, "network"), (dataset, "dataset"), (attack_or_none, "attack")):
    _parse.__name__ = _name
