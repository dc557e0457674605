"""SSH to cluster nodes (asyncssh): host-key policy, the readiness loop, commands and SFTP uploads.

Host keys are checked against the key pinned at launch (cloud-init user data) or, with ``deploy.host_keys = "tofu"``,
against the key first seen, kept per cluster. Neither ``~/.ssh/known_hosts`` nor ``~/.ssh/config`` nor an SSH agent
is ever consulted; ``--insecure-accept-hostkeys`` is the only way to skip the check.
"""
from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from shield_ops.errors import HostKeyError, RemoteError
from shield_ops.nodes import Node, resolve
from shield_ops.state import ClusterState

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0


@dataclass
class SSHContext:
    """Everything needed to open a checked SSH connection to a node of one cluster."""

    state: ClusterState
    user: str
    host_keys: str = "pin"          # "pin" | "tofu" | "insecure"
    bastion: tuple[str, str, int] | None = None     # (user, host, port) of the jump host
    bastion_known_hosts: Path | None = None
    _key: asyncssh.SSHKey | None = field(default=None, repr=False)
    _tunnel: asyncssh.SSHClientConnection | None = field(default=None, repr=False)
    _tunnel_lock: asyncio.Lock | None = field(default=None, repr=False)

    async def tunnel(self, timeout: float) -> asyncssh.SSHClientConnection | None:
        """The one connection to the bastion that every node connection goes through (None without a bastion).
        The bastion's host key is checked against ``bastion_known_hosts`` unless the policy is insecure."""
        if self.bastion is None:
            return None
        if self._tunnel_lock is None:
            self._tunnel_lock = asyncio.Lock()
        async with self._tunnel_lock:
            if self._tunnel is None or self._tunnel.is_closed():
                user, host, port = self.bastion
                known = None if self.host_keys == "insecure" else str(self.bastion_known_hosts)
                try:
                    self._tunnel = await asyncssh.connect(
                        host, port, username=user, client_keys=[self.client_key()], known_hosts=known,
                        agent_path=None, config=None, preferred_auth="publickey", connect_timeout=timeout,
                        keepalive_interval=30)
                except asyncssh.HostKeyNotVerifiable as exc:
                    raise HostKeyError(f"bastion {host}:{port} presented a host key not in "
                                       f"{self.bastion_known_hosts}: {exc.reason}") from None
            return self._tunnel

    def client_key(self) -> asyncssh.SSHKey:
        if self._key is None:
            self._key = self.state.private_key()
        return self._key

    def known_hosts(self, node: Node) -> Any:
        """The asyncssh ``known_hosts`` argument for ``node`` under the policy."""
        if self.host_keys == "insecure":
            return None
        recorded = self.state.host_key(node.instance_id)
        if recorded is not None:
            return ([recorded], [], [])
        if self.host_keys == "tofu":
            return None
        raise HostKeyError(f"{node.name} ({node.instance_id}): no pinned host key in {self.state.root}: `up` re-pins "
                           "it from the instance's user data or console output; or it was launched from another "
                           "state directory (restore that one), or set deploy.host_keys = \"tofu\"")


async def connect(ctx: SSHContext, node: Node, timeout: float = CONNECT_TIMEOUT_S) -> asyncssh.SSHClientConnection:
    """One checked connection to ``node`` (at the address the resolver gives); records the key on first use."""
    endpoint = resolve(node)
    known = ctx.known_hosts(node)
    tunnel = await ctx.tunnel(timeout)
    try:
        conn = await asyncssh.connect(
            endpoint.host, endpoint.port, tunnel=tunnel, username=ctx.user, client_keys=[ctx.client_key()],
            known_hosts=known,
            agent_path=None, config=None, preferred_auth="publickey", connect_timeout=timeout,
            keepalive_interval=30)
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyError(f"{node.name} ({node.instance_id}) at {endpoint.host}:{endpoint.port} presented a host "
                           f"key that does not match the one recorded in {ctx.state.root}: {exc.reason}") from None
    if known is None and ctx.host_keys == "tofu":
        key = conn.get_server_host_key()
        if key is not None:
            ctx.state.record_host_key(node.instance_id, key)
    return conn


async def wait_ready(ctx: SSHContext, node: Node, deadline_s: float, interval_s: float,
                     on_attempt: Callable[[str], None] = lambda _m: None) -> asyncssh.SSHClientConnection:
    """Retry :func:`connect` until it works or ``deadline_s`` passes; a host-key mismatch fails at once."""
    deadline = time.monotonic() + deadline_s
    attempt = 0
    while True:
        attempt += 1
        left = deadline - time.monotonic()
        try:
            return await connect(ctx, node, timeout=max(1.0, min(CONNECT_TIMEOUT_S, left)))
        except HostKeyError:
            raise
        except (OSError, asyncio.TimeoutError, asyncssh.Error, LookupError) as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            if time.monotonic() + interval_s >= deadline:
                raise RemoteError(f"{node.name}: SSH not ready after {deadline_s:.0f}s ({attempt} attempts): "
                                  f"{reason}; raise deploy.ssh_ready_timeout or check the security group") from None
            on_attempt(f"waiting for ssh ({reason})")
            await asyncio.sleep(interval_s)


@dataclass(frozen=True)
class Result:
    exit_status: int
    stdout: str
    stderr: str


async def run(conn: asyncssh.SSHClientConnection, command: str, *, check: bool = True,
              timeout: float | None = 600, what: str = "", input: str | None = None) -> Result:
    """Run a shell command (``input`` on its stdin); with ``check`` a non-zero exit raises :class:`RemoteError`
    with the output's tail."""
    try:
        proc = await conn.run(command, check=False, timeout=timeout, input=input)
    except asyncssh.TimeoutError:
        raise RemoteError(f"{what or command[:60]}: timed out after {timeout}s") from None
    result = Result(int(proc.exit_status if proc.exit_status is not None else -1),
                    str(proc.stdout or ""), str(proc.stderr or ""))
    if check and result.exit_status != 0:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-5:]
        raise RemoteError(f"{what or command[:60]} failed (exit {result.exit_status}): {' | '.join(tail)}")
    return result


async def upload(conn: asyncssh.SSHClientConnection, files: list[tuple[Path, str]], mode: int = 0o644) -> None:
    """SFTP ``(local path, remote path relative to the login directory)`` pairs, then chmod each to ``mode``."""
    async with conn.start_sftp_client() as sftp:
        for local, remote in files:
            await sftp.put(str(local), remote)
            await sftp.chmod(remote, mode)


async def write_text(conn: asyncssh.SSHClientConnection, remote: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``remote`` (relative to the login directory) over SFTP: a temporary name, then a rename."""
    async with conn.start_sftp_client() as sftp:
        tmp = f"{remote}.tmp"
        async with sftp.open(tmp, "wb") as handle:
            await handle.write(text.encode())
        await sftp.chmod(tmp, mode)
        await sftp.posix_rename(tmp, remote)


def quote(args: list[str] | tuple[str, ...]) -> str:
    return " ".join(shlex.quote(a) for a in args)
