"""``shield-agent``: the worker agent's command line.

Subcommands are registered in :data:`COMMANDS`, one module each exposing ``register(subparsers)`` and
``run(args) -> int``; heavy imports (torch) happen inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn, Sequence

from shield_agent.errors import ShieldAgentError

#: subcommand name -> implementing module.
COMMANDS: dict[str, str] = {
    "join": "shield_agent.cli_join",
    "prepare": "shield_agent.cli_prepare",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="shield-agent", description="ByzShield worker agent.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(importlib.import_module(COMMANDS[args.command]).run(args) or 0)
    except ShieldAgentError as exc:
        print(f"shield-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
