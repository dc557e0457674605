"""``shield-agent``: the worker agent's command line.

Subcommands are registered in :data:`COMMANDS`, one module each exposing ``register(subparsers)`` and
``run(args) -> int``; heavy imports (torch) happen inside ``run``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shield_agent.errors import AGENT_ERRORS
from wire.cli import build_parser as _build_parser
from wire.cli import run_tool
from wire.errors import WireError

#: subcommand name -> implementing module.
COMMANDS: dict[str, str] = {
    "join": "shield_agent.cli_join",
    "prepare": "shield_agent.cli_prepare",
}


PROG, DESCRIPTION = "shield-agent", "ByzShield worker agent."


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(PROG, DESCRIPTION, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(PROG, DESCRIPTION, COMMANDS, (*AGENT_ERRORS, WireError), argv)


if __name__ == "__main__":
    sys.exit(main())
