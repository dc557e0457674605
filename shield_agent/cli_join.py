"""``shield-agent join HOST:PORT``: serve a PS as one worker until it ends the run."""
from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from shield_agent.errors import ShieldAgentError

DEFAULT_DATA_DIR = "~/.cache/shield/data"


def host_port(text: str) -> tuple[str, int]:
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def read_token(token: str | None, token_file: str | None) -> str:
    """The cluster token from ``--token``, ``--token-file`` or ``$SHIELD_TOKEN`` (in that order)."""
    if token_file:
        try:
            token = Path(token_file).expanduser().read_text().strip()
        except OSError as exc:
            raise ShieldAgentError(f"cannot read --token-file {token_file}: {exc.strerror}") from None
    token = token or os.environ.get("SHIELD_TOKEN")
    if not token:
        raise ShieldAgentError("no cluster token: pass --token, --token-file or set SHIELD_TOKEN")
    if len(token.encode()) < 16:
        raise ShieldAgentError("the cluster token must be at least 16 bytes")
    return token


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("join", help="join a PS at HOST:PORT and compute gradients until the run ends")
    parser.add_argument("address", type=host_port, metavar="HOST:PORT", help="the PS to join")
    parser.add_argument("--token", help="the cluster token (prefer --token-file or $SHIELD_TOKEN)")
    parser.add_argument("--token-file", help="file holding the cluster token")
    parser.add_argument("--data-dir", default=os.environ.get("SHIELD_DATA_DIR", DEFAULT_DATA_DIR),
                        help="where the datasets are (default: $SHIELD_DATA_DIR or %(default)s)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: as the PS says)")
    parser.add_argument("--name", default="", help="a name shown on the PS (default: none)")
    parser.add_argument("--no-reconnect", action="store_true", help="exit when the PS connection drops")
    parser.add_argument("--spot-watch", action="store_true",
                        help="poll the EC2 metadata service for a spot interruption notice and leave cleanly")
    parser.add_argument("--imds", type=host_port, help=argparse.SUPPRESS)
    # testing the defence end to end: real Byzantine agents that lie on the wire
    parser.add_argument("--lie", type=float, metavar="FACTOR", help=argparse.SUPPRESS)
    parser.add_argument("--lie-payload", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from shield_agent.client import AgentOptions, run_agent
    from wire import install_event_loop

    token = read_token(args.token, args.token_file)
    host, port = args.address
    options = AgentOptions(host=host, port=port, token=token, data_dir=str(Path(args.data_dir).expanduser()),
                           threads=args.threads, name=args.name[:64], reconnect=not args.no_reconnect,
                           lie_factor=args.lie, lie_payload=args.lie_payload, spot_watch=args.spot_watch,
                           imds=args.imds)
    install_event_loop()
    return asyncio.run(run_agent(options))
