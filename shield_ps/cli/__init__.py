"""``shield-ps``: the parameter server's command line.

Subcommands are registered in :data:`COMMANDS`, one module each; a module exposes ``register(subparsers)`` and
``run(args) -> int``. Modules import their heavy dependencies inside ``run`` so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shield_ps.errors import PS_ERRORS
from wire.cli import build_parser as _build_parser
from wire.cli import run_tool
from wire.errors import WireError

#: subcommand name -> module under ``shield_ps.cli`` that implements it.
COMMANDS: dict[str, str] = {
    "analyze": "shield_ps.cli.analyze",
    "evaluate": "shield_ps.cli.evaluate",
    "plot": "shield_ps.cli.plot",
    "serve": "shield_ps.cli.serve",
    "sweep": "shield_ps.cli.sweep",
    "watch": "shield_ps.cli.watch",
}


PROG, DESCRIPTION = "shield-ps", "ByzShield parameter server."


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(PROG, DESCRIPTION, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(PROG, DESCRIPTION, COMMANDS, (*PS_ERRORS, WireError), argv)


if __name__ == "__main__":
    sys.exit(main())
