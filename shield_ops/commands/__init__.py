"""One module per ``shield-ops`` subcommand, each with ``register(subparsers)`` and ``run(args) -> int``."""
