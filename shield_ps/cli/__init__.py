"""``shield-ps``: the parameter server's command line.

Subcommands are registered in :data:`COMMANDS`, one module each; a module exposes ``register(subparsers)`` and
``run(args) -> int``. Modules import their heavy dependencies inside ``run`` so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from shield_ps.cli.args import OneLineErrorParser
from shield_ps.errors import ShieldPSError

#: subcommand name -> module under ``shield_ps.cli`` that implements it.
COMMANDS: dict[str, str] = {
    "analyze": "shield_ps.cli.analyze",
    "evaluate": "shield_ps.cli.evaluate",
    "plot": "shield_ps.cli.plot",
    "serve": "shield_ps.cli.serve",
    "watch": "shield_ps.cli.watch",
}

log = logging.getLogger("shield_ps")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="shield-ps", description="ByzShield parameter server.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args) or 0)
    except ShieldPSError as exc:
        print(f"shield-ps {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
