"""Arguments and helpers shared by the ``shield-ops`` subcommands."""
from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from shield_ops.config import ClusterConfig, load_config
from shield_ops.errors import ShieldOpsError
from shield_ops.nodes import Node, sort_key
from shield_ops.remote import SSHContext
from shield_ops.state import ClusterState


def add_config_args(parser: argparse.ArgumentParser, ssh: bool = True) -> None:
    parser.add_argument("-c", "--config", required=True, type=Path, help="cluster TOML (see examples/cluster.toml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config field, e.g. --set agents.count=3 (repeatable)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="per-cluster state directory (default ~/.shield/clusters/NAME)")
    if ssh:
        parser.add_argument("--insecure-accept-hostkeys", action="store_true",
                            help="accept any SSH host key (never do this outside a test bed)")


def load(args: argparse.Namespace) -> tuple[ClusterConfig, ClusterState]:
    from shield_ops.nodes import set_endpoint_mode

    cfg = load_config(args.config, args.overrides, args.state_dir)
    set_endpoint_mode(cfg.ssh_endpoint)
    state = ClusterState(cfg.state_dir)
    state.check_location()
    return cfg, state


def ssh_context(cfg: ClusterConfig, state: ClusterState, args: argparse.Namespace) -> SSHContext:
    policy = "insecure" if getattr(args, "insecure_accept_hostkeys", False) else cfg.host_keys
    return SSHContext(state, cfg.ssh_user, policy, bastion=cfg.ssh_bastion,
                      bastion_known_hosts=cfg.ssh_bastion_known_hosts)


def confirm_or_refuse(assume_yes: bool) -> Callable[[str], bool]:
    """A confirmation callback (asked the question of what it would do): -y says yes; a terminal is asked; anything
    else is refused with the fix."""
    def confirm(question: str) -> bool:
        if assume_yes:
            return True
        if not sys.stdin.isatty():
            raise ShieldOpsError(f"{question} needs confirmation and stdin is not a terminal; pass -y")
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    return confirm


def select(nodes: list[Node], names: list[str] | None) -> list[Node]:
    """Running nodes, optionally only those named (unknown names are an error listing the known ones)."""
    running = sorted((n for n in nodes if n.ec2_state == "running"), key=lambda n: sort_key(n.name))
    if not names:
        return running
    known = {n.name: n for n in running}
    missing = [n for n in names if n not in known]
    if missing:
        raise ShieldOpsError(f"no running node named {', '.join(missing)}; known: {', '.join(known) or '(none)'}")
    return [known[n] for n in names]


def arun(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a command's coroutine; AWS, SSH and network failures become one-line :class:`ShieldOpsError`s."""
    import asyncssh
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return asyncio.run(coro)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise ShieldOpsError(f"AWS refused {exc.operation_name}: {err.get('Code')}: {err.get('Message')}") from None
    except BotoCoreError as exc:
        raise ShieldOpsError(f"AWS: {exc}") from None
    except asyncssh.Error as exc:
        raise ShieldOpsError(f"ssh: {exc.reason}") from None
    except OSError as exc:
        raise ShieldOpsError(f"{type(exc).__name__}: {exc}") from None


async def discover(cfg: ClusterConfig) -> list[Node]:
    """The cluster's tagged instances, straight from EC2."""
    from shield_ops import ec2

    async with ec2.EC2.open(cfg.region) as cloud:
        return await cloud.find_instances(cfg)


async def on_each(nodes: list[Node], work: Callable[[Node], Coroutine[Any, Any, int]]) -> int:
    """Run ``work`` on every node at once; a node that cannot be reached or fails is reported on stderr as
    ``[node] failed: reason`` and the others carry on. Returns 1 if any node failed or exited non-zero."""
    import asyncssh

    async def one(node: Node) -> int:
        try:
            return await work(node)
        except (ShieldOpsError, asyncssh.Error, OSError, asyncio.TimeoutError, LookupError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            print(f"[{node.name}] failed: {reason}", file=sys.stderr, flush=True)
            return 255
    results = await asyncio.gather(*(one(n) for n in nodes))
    return 1 if any(results) else 0


async def stream_lines(prefix: str, stream: Any, out: Any) -> None:
    """Copy an asyncssh stream line by line to ``out``, each line prefixed with ``[node]``."""
    async for line in stream:
        if not line:
            continue
        out.write(f"[{prefix}] {line if line.endswith(chr(10)) else line + chr(10)}")
        out.flush()
