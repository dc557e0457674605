"""``shield-ops``: provision, deploy and start clusters.

Subcommands are registered in :data:`COMMANDS`, one module each exposing ``register(subparsers)`` and
``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn, Sequence

from shield_ops.errors import ShieldOpsError

#: subcommand name -> implementing module.
COMMANDS: dict[str, str] = {
    "up": "shield_ops.commands.up",
    "status": "shield_ops.commands.status",
    "down": "shield_ops.commands.down",
    "logs": "shield_ops.commands.logs",
    "ssh": "shield_ops.commands.ssh",
    "exec": "shield_ops.commands.execute",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="shield-ops", description="EC2 spot clusters for shield.")
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
    except ShieldOpsError as exc:
        print(f"shield-ops {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
