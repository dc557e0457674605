"""``shield-ops``: provision, deploy and start clusters.

Subcommands are registered in :data:`COMMANDS`, one module each exposing ``register(subparsers)`` and
``run(args) -> int``.
"""
from __future__ import annotations

import sys
from typing import Sequence

from shield_ops.errors import ShieldOpsError
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


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool("shield-ops", "EC2 spot clusters for shield.", COMMANDS, (ShieldOpsError, WireError), argv)


if __name__ == "__main__":
    sys.exit(main())
