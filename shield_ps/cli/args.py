"""Argument types and the parser class shared by the ``shield-ps`` subcommands.

Every type raises ``argparse.ArgumentTypeError`` with a message saying what is allowed; the parser turns it into a
one-line error and exit code 2 (never a traceback).
"""
from __future__ import annotations

import argparse
import enum
import sys
from typing import Callable, NoReturn, TypeVar

E = TypeVar("E", bound=enum.Enum)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def enum_choice(enum_type: type[E], aliases: dict[str, E] | None = None) -> Callable[[str], E]:
    """An argparse type accepting the enum's values (and optional aliases), naming all of them on error."""
    table: dict[str, E] = {member.value: member for member in enum_type}
    table.update(aliases or {})

    def parse(text: str) -> E:
        try:
            return table[text]
        except KeyError:
            allowed = ", ".join(sorted(table))
            raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {allowed})") from None

    parse.__name__ = enum_type.__name__
    return parse


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()
