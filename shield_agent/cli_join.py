"""``shield-agent join HOST:PORT``: serve a PS as one worker until it ends the run."""
from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from wire.auth import read_token
from shield_agent.device import parse_device
from wire.cli import host_port, positive_float, positive_int
from wire.errors import TokenError

DEFAULT_DATA_DIR = "~/.cache/shield/data"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("join", help="join a PS at HOST:PORT and compute gradients until the run ends")
    parser.add_argument("address", type=host_port, metavar="HOST:PORT", help="the PS to join")
    parser.add_argument("--token", help="the cluster token (prefer --token-file or $SHIELD_TOKEN)")
    parser.add_argument("--token-file", help="file holding the cluster token")
    parser.add_argument("--data-dir", default=os.environ.get("SHIELD_DATA_DIR", DEFAULT_DATA_DIR),
                        help="where the datasets are (default: $SHIELD_DATA_DIR or %(default)s)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: as the PS says)")
    parser.add_argument("--device", type=parse_device, default="cpu",
                        help="where to compute: cpu (default), cuda, cuda:N, or auto (a GPU when torch sees one)")
    parser.add_argument("--name", default="", help="a name shown on the PS (default: none)")
    parser.add_argument("--no-reconnect", action="store_true", help="exit when the PS connection drops")
    parser.add_argument("--spot-watch", action="store_true",
                        help="poll the EC2 metadata service for a spot interruption notice and leave cleanly")
    parser.add_argument("--imds", type=host_port, help=argparse.SUPPRESS)
    # testing the defence end to end: real Byzantine agents that lie on the wire
    parser.add_argument("--lie", type=float, metavar="FACTOR", help=argparse.SUPPRESS)
    parser.add_argument("--lie-payload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--lie-deviation", type=positive_float, metavar="REL", help=argparse.SUPPRESS)
    parser.add_argument("--lie-sketch", action="store_true", help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from shield_agent.client import AgentOptions, run_agent
    from wire import install_event_loop

    token = read_token(args.token, args.token_file)
    if token is None:
        raise TokenError("no cluster token: pass --token, --token-file or set SHIELD_TOKEN")
    host, port = args.address
    options = AgentOptions(host=host, port=port, token=token, data_dir=str(Path(args.data_dir).expanduser()),
                           threads=args.threads, name=args.name[:64], reconnect=not args.no_reconnect,
                           lie_factor=args.lie, lie_payload=args.lie_payload, spot_watch=args.spot_watch,
                           imds=args.imds, lie_deviation=args.lie_deviation, lie_sketch=args.lie_sketch,
                           device=args.device)
    install_event_loop()
    return asyncio.run(run_agent(options))
