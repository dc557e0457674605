"""``shield-ps serve``: run a training job (optionally with ``--local-agents K`` on this machine).

The original ByzShield flag names are accepted as aliases (``--approach``, ``--mode``, ``--worker-fail``,
``--group-size``, ``--err-mode``, ``--lis-simulation``, ``--adversarial``) with their original values
(``draco_lite``, ``rev_grad``, ``hard_coded``, ...), so the paper's scripts translate directly.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shield_ps.cli.serve_args import add_config_arguments, config_from_args
from shield_ps.config import ServeConfig
from shield_ps.errors import CONFIG_ERRORS

if TYPE_CHECKING:
    from shield_ps.daemon import PSDaemon

#: The line `serve` prints once it listens; scripts (bench/) read the port back with :func:`listening_port`.
LISTENING_LINE = "shield-ps: listening on {host}:{port}; run directory {train_dir}"
LISTENING_PATTERN = re.compile(r"shield-ps: listening on \S+:(\d+);")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run a training job as the parameter server",
                            description="Run a training job. --batch-size is the whole batch b; it is cut into f "
                            "files of b/f samples, and each worker computes l files, i.e. l*b/f samples per step.")
    add_config_arguments(parser)


def listening_port(log_text: str) -> int | None:
    """The port in ``serve``'s :data:`LISTENING_LINE` within ``log_text`` (None until it is there)."""
    found = LISTENING_PATTERN.search(log_text)
    return int(found.group(1)) if found else None


def _token(args: argparse.Namespace) -> tuple[str, bool]:
    """The cluster token and whether it must be written to RUN/token (it was generated or given on the command
    line: local agents and the printed join command need a file)."""
    from shield_ps.daemon import new_token
    from wire.auth import read_token

    if args.token is not None:
        print("shield-ps serve: warning: --token is visible to other local users (in the process list); prefer "
              "--token-file", file=sys.stderr)
    token = read_token(args.token, args.token_file)
    return (token, args.token_file is None) if token is not None else (new_token(), True)


def join_command(host: str, port: int, token_file: Path, config: ServeConfig, workers: int = 1) -> str:
    """The complete command that joins ``workers`` slots to this PS, runnable as printed on this machine: the
    token file, the slots, and the data directory the PS reads (or ``--synthetic 0`` for a synthetic job)."""
    import shlex
    import socket

    from shield_ps.plugins import agent_args as plugin_args

    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    parts = ["shield-agent", "join", f"{shown}:{port}", "--token-file", str(token_file)]
    if workers != 1:
        parts += ["--workers", str(workers)]
    if config.synthetic_d is not None:
        parts += ["--synthetic", "0"]
    elif config.data_dir is not None:
        parts += ["--data-dir", config.data_dir]
    return shlex.join(parts + plugin_args(config))


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of ``path`` that does not exist yet (what ``mkdir -p`` would create), or None."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists():
            break
        missing = candidate
    return missing


def _leaves_nothing(train_dir: Path) -> bool:
    """True when a run directory holds nothing a run made (only the token and an empty metrics.jsonl)."""
    for path in train_dir.iterdir():
        if path.name == "token" or (path.name == "metrics.jsonl" and path.stat().st_size == 0):
            continue
        return False
    return True


def run(args: argparse.Namespace) -> int:
    from shield_ps.daemon import PSDaemon
    from shield_ps.data import locate_data
    from shield_ps.events import EventSink
    from shield_ps.job import resolve_job
    from shield_ps.local_agents import write_token_file
    from shield_ps.plugins import resolve_plugins
    from shield_ps.view import view_from_args
    from wire import install_event_loop

    config = config_from_args(args)
    resolve_job(config)  # validation: a refused run leaves nothing behind
    data_line = None
    if config.synthetic_d is None:  # before any directory or agent: a bad --data-dir creates nothing
        where = locate_data(config.dataset, config.data_dir, download=True)
        config = resolve_plugins(config, str(where.path)).replace(data_dir=where.hand_on)  # a bad plug-in neither
        data_line = f"shield-ps: data {where.describe()}"
    token, write_token = _token(args)
    train_dir = Path(config.train_dir)
    created = _first_missing(train_dir)
    train_dir.mkdir(parents=True, exist_ok=True)
    token_file = write_token_file(train_dir / "token", token) if write_token else Path(args.token_file)
    view = view_from_args(args)
    root = logging.getLogger()
    handler = view.log_handler(root.level or logging.WARNING)
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    sink = EventSink(train_dir / "metrics.jsonl")
    sink.subscribe(view.publish)

    def listening(host: str, port: int) -> None:
        view.post_line(LISTENING_LINE.format(host=host, port=port, train_dir=train_dir))
        if data_line is not None:
            view.post_line(data_line)
        if config.local_agents < config.workers:
            missing = config.workers - config.local_agents
            command = join_command(host, port, token_file, config, missing)
            view.post_line(f"waiting for {missing} agent slot(s); join with: {command}")
            if missing > 1:
                view.post_line(f"(--workers N hosts N slots in one agent process; several processes, here or on "
                               f"other machines, may share the {missing} slots)")

    install_event_loop()
    daemon = PSDaemon(config, token, sink, on_listening=listening, token_file=token_file)
    view.start()
    try:
        return asyncio.run(_serve(daemon))
    except CONFIG_ERRORS:
        sink.close()
        if created is not None and _leaves_nothing(train_dir):
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        view.close()
        sink.close()
        if train_dir.exists():
            print(f"shield-ps: run directory {train_dir}", file=sys.stderr)


async def _serve(daemon: PSDaemon) -> int:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await daemon.run()
    except asyncio.CancelledError:
        print("shield-ps: interrupted; checkpoints so far are kept", file=sys.stderr)
        return 130
