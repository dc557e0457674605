"""``shield-ops``: provision, deploy and start clusters.

Subcommands are registered in :data:`COMMANDS`, one module each exposing ``register(subparsers)`` and
``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from shield_ops.errors import ShieldOpsError
from wire.cli import build_parser as _build_parser
from wire.cli import run_tool
from wire.errors import WireError

#: subcommand name -> implementing module.
COMMANDS: dict[str, str] = {
    "up": "shield_ops.commands.up",
    "status": "shield_ops.commands.status",
    "down": "shield_ops.commands.down",
    "logs": "shield_ops.commands.logs",
    "ssh": "shield_ops.commands.ssh",
    "exec": "shield_ops.commands.execute",
}


PROG, DESCRIPTION = "shield-ops", "EC2 spot clusters for shield."


def build_parser() -> argparse.ArgumentParser:
    return _build_parser(PROG, DESCRIPTION, COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(PROG, DESCRIPTION, COMMANDS, (ShieldOpsError, WireError), argv)


if __name__ == "__main__":
    sys.exit(main())
