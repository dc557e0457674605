"""``shield-agent``: the worker agent's command line.

Subcommands are registered in :data:`COMMANDS`, one module each exposing ``register(subparsers)`` and
``run(args) -> int``; heavy imports (torch) happen inside ``run``.
"""
from __future__ import annotations

import sys
from typing import Sequence

from shield_agent.errors import ShieldAgentError
from wire.cli import run_tool
from wire.errors import WireError

#: subcommand name -> implementing module.
COMMANDS: dict[str, str] = {
    "join": "shield_agent.cli_join",
    "prepare": "shield_agent.cli_prepare",
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("shield-agent", "ByzShield worker agent.", COMMANDS, (ShieldAgentError, WireError), argv)


if __name__ == "__main__":
    sys.exit(main())
