"""``shield-ps watch HOST:PORT``: attach the terminal view to a running PS, read-only.

The watcher authenticates as an *observer*: the PS only ever sends it events and refuses any gradient from it.
``shield-ps watch RUN_DIR`` replays a finished (or running) run's ``metrics.jsonl`` instead.
"""
from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from shield_ps.errors import ConfigError
from shield_ps.view import add_view_options
from wire.auth import read_token
from wire.cli import host_port


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("watch", help="show a running PS's progress (HOST:PORT) or a run directory's")
    p.add_argument("target", metavar="HOST:PORT|RUN", help="a PS address, or a run directory to replay")
    p.add_argument("--token", help="the cluster token (or --token-file, or $SHIELD_TOKEN)")
    p.add_argument("--token-file", help="file holding the cluster token")
    add_view_options(p)


def _address(text: str) -> tuple[str, int] | None:
    try:
        return host_port(text)
    except argparse.ArgumentTypeError:
        return None


def _token(args: argparse.Namespace) -> str:
    token = read_token(args.token, args.token_file)
    if token is None:
        raise ConfigError("watching a PS needs its cluster token: --token, --token-file or $SHIELD_TOKEN")
    return token


async def _watch(host: str, port: int, token: str, publish) -> str:
    from wire import ConnectionClosed, Kind, MessageError, WireError, connect
    from wire.messages import parse_event

    try:
        conn = await connect(host, port, token=token, role="observer", name="watch")
    except (OSError, WireError, asyncio.TimeoutError) as exc:
        raise ConfigError(f"cannot attach to {host}:{port}: {exc}") from None
    try:
        await conn.send(Kind.SUBSCRIBE, {})
        async for msg in conn:
            if msg.kind is not Kind.EVENT:
                msg.discard()
                continue
            try:
                event = parse_event(msg.header).event
            except MessageError:
                continue
            publish(event)
            if event.get("kind") == "summary":
                return "the run ended"
        return f"the PS closed the connection ({conn.close_error})"
    except ConnectionClosed as exc:
        return f"the PS closed the connection ({exc})"
    finally:
        await conn.close("watcher leaving")


def run(args: argparse.Namespace) -> int:
    from shield_ps.view import replay_file, view_from_args
    from wire import install_event_loop

    address = _address(args.target)
    if address is None:
        if not Path(args.target).is_dir():
            raise ConfigError(f"{args.target!r} is neither HOST:PORT nor a run directory")
        with view_from_args(args) as view:
            replay_file(args.target, view)
        return 0
    token = _token(args)
    view = view_from_args(args)
    view.start()
    try:
        install_event_loop()
        outcome = asyncio.run(_watch(*address, token, view.publish))
        view.post_line(f"watch: {outcome}")
    finally:
        view.close()
    return 0
