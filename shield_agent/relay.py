"""Relay broadcast, the agent's side: serve the step's parameters to other agents, and take them from one.

The PS sends each step's parameter vector to a few agents only; every other agent is told in its STEP header where to
take it (a parent agent's relay server, or a sibling slot of its own process) and the BLAKE3 digest it must have
(``params_digest``). A relay forwards each chunk as it arrives (cut-through), and every receiver checks the digest
before computing, so a relay can withhold or corrupt the parameters but never make anyone compute on wrong ones: when
nothing valid arrived by the deadline the PS named, the agent tells the PS (``RELAY``), which sends the vector
directly and records the relay (its relay phase). A relay whose own vector turns out wrong cuts the frames it
is forwarding. docs/performance.md measures the tree.

One :class:`RelayHub` per agent process: a store of the verified vectors of the last steps (:class:`RelayStore`),
a server other agents connect to with the cluster token (role ``relay``), and cached client connections to the
relays this process takes vectors from.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from shield_agent.adversary import HONEST, Adversary
from shield_agent.relay_store import RelayAborted, RelayEntry, RelayStore
from shield_model.errors import ComputeError
from wire import (
    AuthError,
    ConnectionClosed,
    Kind,
    Limits,
    Message,
    MessageError,
    RemoteError,
    Timeouts,
    WireError,
    WireTimeoutError,
    connect,
    serve,
)
from wire.auth import Role
from wire.messages import (
    MAX_RELAY_WAIT_S,
    RELAY_REASONS,
    ErrorReply,
    RelayInstruction,
    RelayRequest,
    VectorReply,
    parse_relay_instruction,
    parse_relay_request,
)

log = logging.getLogger(__name__)

#: The longest wait a STEP header or a relay request may ask for, seconds.
MAX_WAIT_S = MAX_RELAY_WAIT_S
#: Why a relay failed, as the RELAY message to the PS says it.
REASONS = RELAY_REASONS
#: Seconds a relay we could not connect to is presumed unreachable (doubling with each failed probe, up to the max).
UNREACHABLE_S = 30.0
MAX_UNREACHABLE_S = 600.0
#: Failed connections to distinct relays in a row, none succeeding, after which this process presumes it reaches no
#: relay at all (it is behind NAT or a firewall) until a probe gets through: at once, since a wait costs a step (the
#: PS erases a worker still waiting for its relay once every file is decided) and a wrong presumption only the PS's
#: egress of one vector per step until the next relay it is told about answers the background probe.
ISOLATED_AFTER = 1


class RelayError(ComputeError):
    """A malformed relay instruction from the PS."""

    code = "bad_relay"


@dataclass(frozen=True)
class RelaySource:
    """Where the PS told us to take a step's parameters: worker ``worker``'s process at ``host:port``, within
    ``wait`` seconds of the STEP header."""

    worker: int
    host: str
    port: int
    wait: float

    @classmethod
    def from_instruction(cls, relay: RelayInstruction) -> RelaySource:
        """The relay instruction of a STEP, as :func:`wire.messages.parse_step_order` typed it."""
        return cls(relay.worker, relay.host, relay.port, relay.wait)

    @classmethod
    def from_field(cls, relay: object) -> RelaySource:
        """A STEP header's ``relay`` field, untyped (RelayError when it is missing or malformed)."""
        try:
            return cls.from_instruction(parse_relay_instruction(relay))
        except MessageError as exc:
            raise RelayError(f"malformed relay instruction in STEP: {exc}") from None


class RelayHub:
    """The process's relay server, its client connections, and its store (see the module docstring).

    ``adversary`` (``--adversary``, :mod:`shield_agent.adversary`) may make the server Byzantine: a behaviour that
    takes relay requests or relay sends over (``relay-staller``, ``relay-corrupter``)."""

    def __init__(self, token: str, *, bind: str = "127.0.0.1", port: int = 0, adversary: Adversary = HONEST,
                 timeouts: Timeouts | None = None) -> None:
        self.store = RelayStore()
        self.id = secrets.token_bytes(16)  # told to the PS only: slots reporting it are this process's (docs/wire.md)
        self._token, self._bind, self._port = token, bind, port
        self._request_taker = adversary.takes("relay_request")
        self._send_taker = adversary.takes("relay_send")
        self._timeouts = timeouts or Timeouts()
        self._server: Any = None
        self._clients: dict[tuple[str, int], Any] = {}
        self._client_locks: dict[tuple[str, int], asyncio.Lock] = {}
        self.reach = Reachability()
        self._probes: dict[tuple[str, int], asyncio.Task[None]] = {}

    @property
    def port(self) -> int | None:
        """The server's bound port (None when not serving)."""
        return self._server.port if self._server is not None else None

    async def start(self) -> None:
        """Listen for other agents (role ``relay`` only; the cluster token authenticates them)."""
        ids = itertools.count()

        def admit(role: Role, name: str) -> int:
            if role is not Role.RELAY:
                raise AuthError("this is an agent's relay server: only relay connections")
            return next(ids)

        self._server = await serve(self._bind, self._port, self._serve, token=self._token, admit=admit,
                                   limits=Limits(max_preauth=64, max_preauth_per_host=16), timeouts=self._timeouts)
        log.info("relay server on %s:%d", self._bind, self._server.port)

    async def close(self) -> None:
        for probe in self._probes.values():
            probe.cancel()
        await asyncio.gather(*self._probes.values(), return_exceptions=True)
        for conn in self._clients.values():
            await conn.close("agent leaving")
        self._clients.clear()
        if self._server is not None:
            await self._server.close(grace=1.0)

    # ---- serving ----------------------------------------------------------------------------------------------
    async def _serve(self, conn: Any) -> None:
        async for msg in conn:
            match msg.kind:
                case Kind.RELAY:
                    await self._serve_one(conn, msg)
                case _:
                    msg.discard()

    async def _serve_one(self, conn: Any, msg: Message) -> None:
        try:
            request = parse_relay_request(msg.header)
        except MessageError as exc:
            await conn.reply(msg, Kind.ERROR, ErrorReply("bad_relay", str(exc)).header())
            return
        step, digest, wait = request.step, request.digest, request.wait
        if self._request_taker is not None and await self._request_taker.relay_request(self.store, conn, msg, step,
                                                                                      digest, wait):
            return
        entry = await self.store.get(step, digest, 0.9 * wait, while_connected=True)  # answer before the asker gives up
        if entry is None:
            await conn.reply(msg, Kind.ERROR, ErrorReply("not_ready", f"no parameters for step {step}").header())
            return
        send = asyncio.get_running_loop().create_task(self._send(conn, msg, entry))
        with self.store.reading(entry.buffer, send):
            try:
                await asyncio.wait_for(send, wait)
            except asyncio.TimeoutError:
                await conn.close(f"relay of step {step} took more than {wait:.1f}s", code="timeout")
            except RelayAborted as exc:  # the frame was cut and the connection closed: the asker finds out
                log.info("relay of step %d cut: %s", step, exc)
            except asyncio.CancelledError:
                if not send.cancelled() or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                await conn.close(f"step {step}'s parameters were withdrawn (a newer step needs the buffer)")

    async def _send(self, conn: Any, msg: Message, entry: RelayEntry) -> None:
        if self._send_taker is not None:
            await self._send_taker.relay_send(self.store, conn, msg, entry)
            return
        await conn.send_vector_as_filled(Kind.VECTOR, VectorReply(entry.step).header(), entry.buffer,
                                         lambda nbytes: self.store.filled(entry, nbytes), reply_to=msg)

    # ---- receiving --------------------------------------------------------------------------------------------
    async def receive(self, source: RelaySource, step: int, digest: bytes, dest: np.ndarray) -> str | None:
        """Fill ``dest`` with the parameters of ``step`` from ``source`` within ``source.wait`` seconds and check
        them against ``digest``; None when done, else why not (one of :data:`REASONS`)."""
        if source.worker in self.store.local_workers:  # a sibling slot of this process takes them for us
            entry = await self.store.get(step, digest, source.wait, complete=True)
            if entry is None:
                return "stalled"
            np.copyto(dest, entry.buffer)
            return None
        key = (source.host, source.port)
        conn = self._clients.get(key)
        if (conn is None or conn.closed) and not self.reach.worth_trying(key, asyncio.get_running_loop().time()):
            self._probe(key)  # in the background: the step does not wait for it
            log.info("relay %s:%d presumed unreachable: asking the PS at once", *key)
            return "unreachable"
        lock = self._client_locks.setdefault(key, asyncio.Lock())
        connecting = [False]
        try:
            async with asyncio.timeout(source.wait):
                async with lock:
                    return await self._receive_remote(key, step, digest, dest, source.wait, connecting)
        except TimeoutError:
            await self._drop_client(key)
            if connecting[0]:  # no connection in all our wait: its SYNs are lost (NAT, a firewall)
                self.reach.failed(key, asyncio.get_running_loop().time())
                return "unreachable"
            return "stalled"

    def _probe(self, key: tuple[str, int]) -> None:
        """Try to connect to a relay presumed unreachable, in the background (one try per relay at a time); a
        connection that gets through is kept for the next step and clears the presumption."""
        if key in self._probes:
            return
        loop = asyncio.get_running_loop()

        async def probe() -> None:
            try:
                conn = await connect(*key, token=self._token, role=Role.RELAY, timeouts=self._timeouts)
            except (TimeoutError, OSError, WireError) as exc:
                log.debug("relay %s:%d still unreachable: %s", *key, exc)
                self.reach.failed(key, loop.time())
                return
            finally:
                self._probes.pop(key, None)
            old = self._clients.get(key)
            if old is not None and not old.closed:
                await conn.close("a connection exists")
            else:
                self._clients[key] = conn
            self.reach.reached(key)

        self._probes[key] = loop.create_task(probe())

    async def _receive_remote(self, key: tuple[str, int], step: int, digest: bytes, dest: np.ndarray,
                              wait: float, connecting: list[bool]) -> str | None:
        try:
            conn = self._clients.get(key)
            if conn is None or conn.closed:
                connecting[0] = True
                conn = self._clients[key] = await connect(*key, token=self._token, role=Role.RELAY,
                                                          timeouts=self._timeouts)
                connecting[0] = False
                self.reach.reached(key)
        except (OSError, WireError) as exc:
            log.info("relay %s:%d unreachable: %s", *key, exc)
            self.reach.failed(key, asyncio.get_running_loop().time())
            return "unreachable"
        entry: RelayEntry | None = None
        got = None
        try:
            reply = await conn.request(Kind.RELAY, RelayRequest(step, digest, wait).header(), timeout=wait + 1)
            if reply.kind is not Kind.VECTOR or reply.vector is None:
                reply.discard()
                await self._drop_client(key)
                return "corrupt"
            entry = self.store.begin(step, digest, dest)  # offered on at once: our children get each chunk as it lands
            got = await reply.read_vector_into(dest, digest=True,
                                               progress=lambda nbytes: self.store.progress(entry, nbytes))
        except RemoteError as exc:
            log.info("relay %s:%d refused step %d: %s", *key, step, exc)
            return "refused"
        except WireTimeoutError:
            await self._drop_client(key)
            return "stalled"
        except (WireError, ConnectionClosed) as exc:
            log.info("relay %s:%d failed for step %d: %s", *key, step, exc)
            await self._drop_client(key)
            return "corrupt"
        finally:
            if entry is not None:
                self.store.finish(entry, ok=got == digest)
        return None if got == digest else "corrupt"

    async def _drop_client(self, key: tuple[str, int]) -> None:
        conn = self._clients.pop(key, None)
        if conn is not None:
            await conn.close("relay failed")


class Reachability:
    """Which relays this process could not connect to, so that it asks the PS at once instead of waiting out each
    step's relay (agents behind NAT or a firewall cannot reach one another; docs/wire.md).

    A relay whose connection failed (refused, or no answer within the wait) is presumed unreachable for
    :data:`UNREACHABLE_S`, doubling with each failure up to :data:`MAX_UNREACHABLE_S`; after :data:`ISOLATED_AFTER`
    distinct relays failed in a row with none reached, every relay is presumed unreachable. Either presumption ends
    when a connection gets through (the hub probes presumed-unreachable relays in the background). Pure bookkeeping
    over a clock the caller passes."""

    def __init__(self) -> None:
        self.until: dict[tuple[str, int], float] = {}
        self.period: dict[tuple[str, int], float] = {}
        self.failed_in_a_row: list[tuple[str, int]] = []
        self.isolated_until = 0.0
        self._isolated_period = UNREACHABLE_S

    def worth_trying(self, key: tuple[str, int], now: float) -> bool:
        """False while ``key`` (or every relay: this process is isolated) is presumed unreachable."""
        return now >= self.isolated_until and now >= self.until.get(key, 0.0)

    def failed(self, key: tuple[str, int], now: float) -> None:
        period = self.period[key] = min(MAX_UNREACHABLE_S, 2 * self.period[key]) if key in self.period \
            else UNREACHABLE_S
        self.until[key] = now + period
        if key not in self.failed_in_a_row:
            self.failed_in_a_row.append(key)
        if len(self.failed_in_a_row) >= ISOLATED_AFTER and now >= self.isolated_until:
            self.isolated_until = now + self._isolated_period
            self._isolated_period = min(MAX_UNREACHABLE_S, 2 * self._isolated_period)

    def reached(self, key: tuple[str, int]) -> None:
        self.until.pop(key, None)
        self.period.pop(key, None)
        self.failed_in_a_row.clear()
        self.isolated_until = 0.0
        self._isolated_period = UNREACHABLE_S
