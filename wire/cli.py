"""Command-line plumbing shared by ``shield-ps``, ``shield-agent`` and ``shield-ops``.

It lives in ``wire`` because that is the one package every tool depends on; it knows nothing of the tools. Each
tool keeps its own table of subcommands (name -> module with ``register(subparsers)`` and ``run(args) -> int``) and
calls :func:`run_tool`. Every argument type raises ``argparse.ArgumentTypeError`` with a message saying what is
allowed; the parser turns it into a one-line error and exit status 2 (never a traceback).
"""
from __future__ import annotations

import argparse
import enum
import importlib
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, TypeVar

E = TypeVar("E", bound=enum.Enum)


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) with a port in 1..65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer in 1..65535, got {port!r}") from None
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {number}")
    return host.strip("[]"), number


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


def package_version() -> str:
    """The installed ``shield`` distribution's version ("unknown" when run from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shield")
    except PackageNotFoundError:
        return "unknown"


def build_parser(prog: str, description: str, commands: Mapping[str, str]) -> argparse.ArgumentParser:
    """The tool's parser: ``--version``, ``-v`` and one subparser per entry of ``commands`` (name -> module)."""
    parser = OneLineErrorParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {package_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in commands.values():
        importlib.import_module(module_name).register(sub)
    return parser


def run_tool(prog: str, description: str, commands: Mapping[str, str],
             handled: tuple[type[BaseException], ...], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the chosen subcommand; an error of a ``handled`` type is one line and exit status 2."""
    args = build_parser(prog, description, commands).parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(importlib.import_module(commands[args.command]).run(args) or 0)
    except handled as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
