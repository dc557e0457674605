"""Listening and dialling: :func:`serve`, :func:`connect`, the handshake driver and :func:`install_event_loop`.

A server runs ``on_connection(conn)`` in its own task for every authenticated peer and closes the connection when it
returns. A peer that misbehaves (bad bytes, bad auth, forbidden kind, too slow) only ever loses its own connection.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from wire import auth
from wire.auth import Role
from wire.conn import Connection, Peer, Timeouts
from wire.errors import AuthError, ConnectionClosed, ProtocolError, WireError, WireTimeoutError
from wire.frames import PROTOCOL_VERSION, Kind, Limits

log = logging.getLogger(__name__)

OnConnection = Callable[[Connection], Awaitable[None]]
Admit = Callable[[Role, str], int]

_REFUSAL_LOG_S = 10.0


def install_event_loop() -> bool:
    """Use uvloop's event loop policy when uvloop is installed (call before ``asyncio.run``); True if it is."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


async def _expect(conn: Connection, kind: Kind, timeout: float) -> dict:
    try:
        msg = await conn.recv(timeout)
    except WireTimeoutError:
        raise WireTimeoutError(f"handshake: no {kind.value} within {timeout}s") from None
    except ConnectionClosed as exc:
        if exc.remote_code in ("auth", "role", "frame", "limit", "protocol"):
            raise AuthError(f"peer refused: {exc.reason}") from None
        raise
    if msg.kind is Kind.ERROR:
        raise AuthError(f"peer refused: {msg.header.get('code')}: {msg.header.get('reason')}")
    if msg.kind is not kind:
        raise AuthError(f"handshake: expected {kind.value}, got {msg.kind.value}")
    return msg.header


async def _server_handshake(conn: Connection, token: bytes, nonces: auth.NonceBook, admit: Admit,
                            deadline: float) -> Peer:
    conn.allowed_kinds = frozenset({Kind.HELLO, Kind.AUTH, Kind.ERROR})
    role, name, client_nonce = auth.parse_hello(await _expect(conn, Kind.HELLO, deadline))
    server_nonce = nonces.issue()
    try:
        await conn.send(Kind.CHALLENGE, {"nonce": server_nonce})
        echoed, mac = auth.parse_auth(await _expect(conn, Kind.AUTH, deadline))
        if echoed != server_nonce:
            raise AuthError("unknown or replayed nonce")
        nonces.redeem(echoed)
    finally:
        nonces.forget(server_nonce)  # a handshake that failed or timed out leaves nothing behind
    if not auth.mac_ok(auth.client_mac(token, server_nonce, role, name, client_nonce), mac):
        raise AuthError("bad MAC (wrong token?)")
    peer_id = admit(role, name)
    await conn.send(Kind.WELCOME, {"id": peer_id, "mac": auth.server_mac(token, client_nonce, server_nonce, peer_id)})
    conn.allowed_kinds = auth.ROLE_SENDS[role]
    return Peer(role.value, name, peer_id)


async def _client_handshake(conn: Connection, token: bytes, role: Role, name: str, deadline: float) -> Peer:
    client_nonce = auth.new_nonce()
    await conn.send(Kind.HELLO, {"version": PROTOCOL_VERSION, "role": role.value, "name": name,
                                 "nonce": client_nonce})
    server_nonce = auth.parse_challenge(await _expect(conn, Kind.CHALLENGE, deadline))
    mac = auth.client_mac(token, server_nonce, role, name, client_nonce)
    await conn.send(Kind.AUTH, {"nonce": server_nonce, "mac": mac})
    peer_id, server_proof = auth.parse_welcome(await _expect(conn, Kind.WELCOME, deadline))
    if not auth.mac_ok(auth.server_mac(token, client_nonce, server_nonce, peer_id), server_proof):
        raise AuthError("server failed to prove it holds the token")
    return Peer(role.value, name, peer_id)


class Server:
    """A listening socket and the connections it accepted. ``port`` is the bound port (useful with port 0).

    Before authentication a connection costs a small read buffer and one handshake task, and at most
    ``Limits.max_preauth`` of them (``Limits.max_preauth_per_host`` per source address) exist at once, each for at
    most ``Timeouts.handshake`` seconds; a connection over a cap is refused at once with a ``busy`` ERROR frame.
    ``refused`` counts refusals by reason (busy, preauth, auth, timeout, protocol); a summary line is logged at most
    once per ``_REFUSAL_LOG_S`` seconds.
    """

    def __init__(self, on_connection: OnConnection, token: bytes, limits: Limits, timeouts: Timeouts,
                 admit: Admit | None) -> None:
        self._on_connection = on_connection
        self._token = token
        self.limits, self.timeouts = limits, timeouts
        counter = itertools.count()
        self._admit: Admit = admit or (lambda role, name: next(counter))
        self._nonces = auth.NonceBook()
        self._tasks: set[asyncio.Task] = set()
        self.connections: set[Connection] = set()
        self._preauth: collections.Counter[str] = collections.Counter()
        self.refused: collections.Counter[str] = collections.Counter()
        self._refusals_logged = 0
        self._refusal_log_at = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._closed = False
        self.host, self.port = "", 0

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    @property
    def preauth_count(self) -> int:
        return sum(self._preauth.values())

    def _protocol(self) -> Connection:
        conn = Connection(self.limits, self.timeouts, header_cap=self.limits.handshake_header_bytes)
        conn.on_made = self._on_made
        return conn

    def _on_made(self, conn: Connection) -> None:
        """Admission, once the peer's address is known: refuse at once over a cap, else start the handshake."""
        peer = conn.transport.get_extra_info("peername") if conn.transport is not None else None
        host = str(peer[0]) if peer else "?"
        reason = None
        if self._closed or len(self.connections) >= self.limits.max_connections:
            reason = "busy"
        elif (self.preauth_count >= self.limits.max_preauth
              or self._preauth[host] >= self.limits.max_preauth_per_host):
            reason = "preauth"
        if reason is not None:
            self._refuse(reason, host)
            conn._shutdown(ConnectionClosed("server busy: too many connections"), code="busy")
            return
        self._preauth[host] += 1
        self.connections.add(conn)
        task = asyncio.get_running_loop().create_task(self._handle(conn, host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, reason: str, host: str) -> None:
        self.refused[reason] += 1
        now = time.monotonic()
        if now - self._refusal_log_at >= _REFUSAL_LOG_S:
            total = self.refused_total
            log.warning("refused %d connection(s) in the last %.0fs (latest from %s: %s); %d in all: %s",
                        total - self._refusals_logged, now - self._refusal_log_at if self._refusal_log_at else 0,
                        host, reason, total, dict(self.refused))
            self._refusals_logged, self._refusal_log_at = total, now

    def _end_preauth(self, host: str) -> None:
        self._preauth[host] -= 1
        if self._preauth[host] <= 0:
            del self._preauth[host]

    async def _handle(self, conn: Connection, host: str) -> None:
        authenticated = False
        try:
            try:
                conn.peer = await asyncio.wait_for(
                    _server_handshake(conn, self._token, self._nonces, self._admit, self.timeouts.handshake),
                    self.timeouts.handshake)
            finally:
                self._end_preauth(host)
            authenticated = True
            conn.reader.expand(self.limits.max_header_bytes)
            conn.start()
            await self._on_connection(conn)
        except (asyncio.TimeoutError, WireTimeoutError):
            if not authenticated:
                self._refuse("timeout", host)
            conn._shutdown(WireTimeoutError("timed out" if authenticated else "handshake timed out"), code="timeout")
        except ConnectionClosed:
            pass
        except WireError as exc:
            if not authenticated:  # our own reader refusing garbage surfaces as a refusal: count it as protocol
                garbage = isinstance(conn.close_error, ProtocolError) or not isinstance(exc, AuthError)
                self._refuse("protocol" if garbage else "auth", host)
            log.info("dropping %s: %s", conn.peer, exc)
            conn._shutdown(exc, code=exc.code)
        except Exception as exc:  # the owner's bug must not take the server down
            log.exception("on_connection failed for %s", conn.peer)
            conn._shutdown(ConnectionClosed(f"internal error: {type(exc).__name__}"), code="internal")
        finally:
            await conn.close()
            self.connections.discard(conn)

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening, close every connection, wait for every task (idempotent). An ``on_connection`` still
        running ``grace`` seconds after its connection closed is cancelled."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn._shutdown(ConnectionClosed("server closing"), code="shutdown")
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve(host: str, port: int, on_connection: OnConnection, *, token: str | bytes,
                limits: Limits | None = None, timeouts: Timeouts | None = None, admit: Admit | None = None,
                backlog: int = 128) -> Server:
    """Listen on ``host:port`` (0 = any free port) and run ``on_connection(conn)`` for every authenticated peer.
    ``admit(role, name) -> id`` assigns peer ids (default 0, 1, 2, ...; raise :class:`AuthError` to refuse)."""
    server = Server(on_connection, auth.token_bytes(token), limits or Limits(), timeouts or Timeouts(), admit)
    loop = asyncio.get_running_loop()
    server._server = await loop.create_server(server._protocol, host, port, backlog=backlog)
    server.host, server.port = server._server.sockets[0].getsockname()[:2]
    return server


def _raise_if_cancelling() -> None:
    """Raise CancelledError when this task was asked to stop: Python 3.11's ``wait_for`` can swallow a cancellation
    that arrives as the connection attempt fails (the refused connect's error is raised instead), and a caller that
    retries on that error would then never stop."""
    task = asyncio.current_task()
    if task is not None and getattr(task, "cancelling", lambda: 0)():
        raise asyncio.CancelledError()


async def connect(host: str, port: int, *, token: str | bytes, role: Role | str = Role.AGENT, name: str = "",
                  limits: Limits | None = None, timeouts: Timeouts | None = None) -> Connection:
    """Dial a server, authenticate (both ways), start heartbeats; the connection's ``peer.id`` is our assigned id."""
    key, role = auth.token_bytes(token), Role(role)
    limits, timeouts = limits or Limits(), timeouts or Timeouts()
    loop = asyncio.get_running_loop()
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: Connection(limits, timeouts), host, port), timeouts.handshake)
    except asyncio.TimeoutError:
        _raise_if_cancelling()
        raise WireTimeoutError(f"cannot reach {host}:{port} within {timeouts.handshake}s") from None
    except OSError as exc:
        _raise_if_cancelling()
        raise ConnectionClosed(f"cannot connect to {host}:{port}: {exc}") from None
    try:
        conn.peer = await asyncio.wait_for(_client_handshake(conn, key, role, name, timeouts.handshake),
                                           timeouts.handshake)
    except BaseException as exc:
        code = exc.code if isinstance(exc, WireError) else "cancelled"
        conn._shutdown(exc if isinstance(exc, WireError) else ConnectionClosed("handshake aborted"), code=code)
        await conn.wait_closed()
        if isinstance(exc, asyncio.TimeoutError):
            raise WireTimeoutError("handshake timed out") from None
        raise
    conn.start()
    return conn
