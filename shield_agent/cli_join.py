"""``shield-agent join HOST:PORT``: serve a PS as one or more workers (``--workers N``) until it ends the run.

At default verbosity the agent says which worker slot(s) it became and how the run ended; the exit status is 0 when
the PS completed the run, 1 when the run failed or the PS was lost, 2 on a refused token or another error of ours.
"""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import re
import signal
from pathlib import Path

from shield_model.device import parse_device
from shield_model.errors import DatasetError
from wire.auth import read_token
from wire.cli import host_port, positive_int
from wire.errors import TokenError

#: Worker slots one process may host (each is a connection; a PS accepts 1024 connections by default).
MAX_WORKERS = 1024


def _workers(text: str) -> int:
    value = positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1..{MAX_WORKERS} worker slots per process, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("join", help="join a PS at HOST:PORT and compute gradients until the run ends")
    parser.add_argument("address", type=host_port, metavar="HOST:PORT", help="the PS to join")
    parser.add_argument("--token", help="the cluster token (prefer --token-file or $SHIELD_TOKEN)")
    parser.add_argument("--token-file", help="file holding the cluster token")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="directory that holds the PS's dataset (default: the cache, $SHIELD_DATA_DIR or "
                        "~/.cache/shield/data; for MNIST, else the test split embedded in the package)")
    parser.add_argument("--plugin", type=_module, action="append", default=[], metavar="MODULE",
                        help="a plug-in module the PS's job may name in --network/--dataset MODULE:CALLABLE "
                        "(repeatable; the agent imports no module the PS names unless it is listed here, and refuses "
                        "a copy whose code differs from the PS's: docs/your-model.md)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: as the PS says)")
    parser.add_argument("--device", type=parse_device, default="cpu",
                        help="where to compute: cpu (default), cuda, cuda:N, or auto (a GPU when torch sees one)")
    parser.add_argument("--workers", type=_workers, default=1, metavar="N",
                        help="worker slots in this process (one torch import and one dataset copy for all; each "
                        "slot is its own worker for the PS; default 1)")
    parser.add_argument("--compute-threads", type=positive_int, metavar="P",
                        help="threads computing the slots' files (default: min(N, cores / torch threads))")
    parser.add_argument("--name", default="", help="a name shown on the PS (default: none)")
    parser.add_argument("--no-reconnect", action="store_true", help="exit when the PS connection drops")
    parser.add_argument("--spot-watch", action="store_true",
                        help="poll the EC2 metadata service for a spot interruption notice and leave cleanly")
    parser.add_argument("--spot-notice-file", metavar="PATH",
                        help="as --spot-watch, and write the notice there (JSON) when it appears, before leaving, "
                        "so that shield-ops starts this node's replacement at once")
    parser.add_argument("--imds", type=host_port, help=argparse.SUPPRESS)
    parser.add_argument("--synthetic", type=_seconds_per_file, metavar="SECONDS_PER_FILE",
                        help="benchmarks and tests only: join a synthetic job (shield-ps serve --synthetic-d) and "
                        "answer each file with a deterministic pseudo-gradient after SECONDS_PER_FILE (no torch)")
    parser.add_argument("--no-relay", action="store_true",
                        help="do not forward the step's parameters to other agents (they then take them from others "
                        "or from the PS; this agent still takes them from relays)")
    parser.add_argument("--relay-bind", metavar="HOST",
                        help="address the relay server listens on (default: 127.0.0.1 when the PS is on loopback, "
                        "else all interfaces); other agents reach it at the address the PS sees plus --relay-port")
    parser.add_argument("--relay-port", type=_port, default=0, metavar="PORT",
                        help="the relay server's port (default 0: any free port)")
    parser.add_argument("--adversary", type=_behaviour, action=_Behaviours, default=[], metavar="NAME[:ARGS]",
                        help="red-teaming: run as a Byzantine agent with this behaviour (repeatable, they compose: "
                        "--adversary hider:0.04 --adversary fake-probe); the zoo, each behaviour's ARGS and what the "
                        "PS should do about it: docs/adversary.md")


def _behaviour(text: str) -> object:
    from shield_agent.adversary import AdversaryError, parse_adversary

    try:
        return parse_adversary(text)
    except AdversaryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Behaviours(argparse.Action):
    """``--adversary`` repeated: the behaviours in order, refused (one line, exit 2) when two cannot compose."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from shield_agent.adversary import AdversaryError, check_composable

        specs = [*getattr(namespace, self.dest, []), values]
        try:
            check_composable(tuple(specs))
        except AdversaryError as exc:
            raise argparse.ArgumentError(self, str(exc)) from None
        setattr(namespace, self.dest, specs)


def _module(text: str) -> str:
    """argparse type of --plugin: a dotted module path (not imported until a job names it)."""
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", text, re.ASCII) or len(text) > 200:
        raise argparse.ArgumentTypeError(f"expected a dotted module path like examples.waveforms, got {text!r}")
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535 (0: any free port), got {text!r}")
    return value


def _seconds_per_file(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds per file in 0..3600, got {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds per file in 0..3600, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from shield_agent.client import AgentOptions
    from shield_agent.slots import run_agent
    from wire import install_event_loop

    token = read_token(args.token, args.token_file)
    if token is None:
        raise TokenError("no cluster token: pass --token, --token-file or set SHIELD_TOKEN")
    host, port = args.address
    data_dir = None
    if args.data_dir is not None:  # the dataset comes with the PS's JOB; a mistyped directory is found now
        data_dir = Path(args.data_dir).expanduser()
        if not data_dir.is_dir():
            raise DatasetError(f"--data-dir {args.data_dir} is not a directory (pass the directory that holds the "
                               "PS's dataset, as its printed join command does)")
    options = AgentOptions(host=host, port=port, token=token, data_dir=None if data_dir is None else str(data_dir),
                           plugins=tuple(args.plugin),
                           threads=args.threads, name=args.name[:64], reconnect=not args.no_reconnect,
                           spot_watch=args.spot_watch or args.spot_notice_file is not None, imds=args.imds,
                           spot_notice_file=args.spot_notice_file, workers=args.workers,
                           compute_threads=args.compute_threads, synthetic=args.synthetic, device=args.device,
                           relay=not args.no_relay, relay_bind=args.relay_bind, relay_port=args.relay_port,
                           adversary=tuple(args.adversary))
    for name in ("shield_agent.client", "shield_agent.slots"):  # which worker we became and how the run ended,
        told = logging.getLogger(name)  # even without -v
        if told.getEffectiveLevel() > logging.INFO:
            told.setLevel(logging.INFO)
    if hasattr(signal, "SIGUSR1"):  # kill -USR1 PID writes every thread's stack to stderr (a stuck agent's log)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    install_event_loop()
    return asyncio.run(run_agent(options))
