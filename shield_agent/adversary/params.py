"""A behaviour's typed, validated arguments: ``NAME[:ARGS]`` with ``ARGS`` comma-separated values, positional in
the order the behaviour declares them or ``key=value``."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shield_agent.errors import ShieldAgentError


class AdversaryError(ShieldAgentError, ValueError):
    """An ``--adversary`` value that names no behaviour, or arguments a behaviour does not take."""

    code = "adversary"


@dataclass(frozen=True)
class Param:
    """One argument: its name, how to read it from text, its default, and what is allowed (for errors)."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    allowed: str
    help: str

    def read(self, behaviour: str, text: str) -> Any:
        try:
            return self.parse(text)
        except (ValueError, TypeError):
            raise AdversaryError(f"{behaviour}: {self.name} must be {self.allowed}, got {text!r}") from None


def real(low: float, high: float, *, nan: bool = False) -> Callable[[str], float]:
    """A parser of a finite float in [low, high] (and NaN when ``nan``)."""
    def parse(text: str) -> float:
        value = float(text)
        if nan and math.isnan(value):
            return value
        if not (math.isfinite(value) and low <= value <= high):
            raise ValueError(text)
        return value
    return parse


def whole(low: int, high: int) -> Callable[[str], int]:
    """A parser of an integer in [low, high]."""
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise ValueError(text)
        return value
    return parse


def choice(*options: str) -> Callable[[str], str]:
    """A parser of one of ``options``."""
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(text)
        return text
    return parse


def read_args(behaviour: str, params: tuple[Param, ...], text: str | None) -> dict[str, Any]:
    """``text`` (the part after ``NAME:``, or None) as the behaviour's keyword arguments, defaults filled in."""
    values = {p.name: p.default for p in params}
    if text is None:
        return values
    if text == "":
        raise AdversaryError(f"{behaviour}: empty arguments after ':' ({_usage(behaviour, params)})")
    by_name = {p.name: p for p in params}
    given: set[str] = set()
    for position, item in enumerate(text.split(",")):
        key, sep, value = item.partition("=")
        if sep:
            param = by_name.get(key.strip())
            if param is None:
                raise AdversaryError(f"{behaviour}: no argument {key.strip()!r} ({_usage(behaviour, params)})")
        else:
            if position >= len(params):
                raise AdversaryError(f"{behaviour}: too many arguments ({_usage(behaviour, params)})")
            param, value = params[position], item
        if param.name in given:
            raise AdversaryError(f"{behaviour}: {param.name} given twice")
        given.add(param.name)
        values[param.name] = param.read(behaviour, value.strip())
    return values


def _usage(behaviour: str, params: tuple[Param, ...]) -> str:
    if not params:
        return f"{behaviour} takes no arguments"
    return f"usage: {behaviour}:" + ",".join(f"{p.name.upper()}" for p in params) + "; " + "; ".join(
        f"{p.name.upper()} {p.allowed} (default {p.default})" for p in params)
