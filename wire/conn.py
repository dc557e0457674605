"""One framed connection over asyncio (with :mod:`wire.server`, the only code that touches sockets).

:class:`Connection` is the transport's ``BufferedProtocol``: bytes are received straight into the reader's buffer or a
payload's destination. Requests carry ids and resolve futures; every other message goes to the owner's inbox
(``await conn.recv()`` or ``async for msg in conn``). Outbound frames are serialised by a lock; above
``Limits.max_write_buffer`` the sender waits for the peer (backpressure), and a peer that does not read for
``Timeouts.send`` seconds is dropped (:mod:`wire.sending`). The keepalive task sends HEARTBEATs and drops a peer
silent for ``Timeouts.idle``. ``close()`` is idempotent and fails every pending request and vector receive.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from wire.autocodec import AutoCodec, is_loopback
from wire.codec import EncodedVector, VectorDesc
from wire.errors import ConnectionClosed, ProtocolError, RemoteError, RoleError, WireError, WireTimeoutError
from wire.frames import Frame, Kind, Limits, encode_frame
from wire.message import Message, Peer, Timeouts
from wire.reader import DiscardSink, FrameReader
from wire.receive import VectorSink
from wire.sending import FrameSender

log = logging.getLogger(__name__)


class Connection(FrameSender, asyncio.BufferedProtocol):
    """A framed, authenticated connection (made by :func:`wire.serve` / :func:`wire.connect`)."""

    def __init__(self, limits: Limits, timeouts: Timeouts, *, header_cap: int | None = None) -> None:
        self.limits, self.timeouts = limits, timeouts
        self.reader = FrameReader(limits, self._on_frame, header_cap=header_cap)
        self.peer: Peer | None = None
        self.allowed_kinds: frozenset[Kind] | None = None  # inbound policy (set by the server from the role)
        self.close_error: WireError | None = None
        self.transport: asyncio.Transport | None = None
        self.bytes_out = 0
        self.tx_codec = AutoCodec()  # --codec auto for what we send (wire.autocodec), fed by our vector frames
        self._loop = asyncio.get_running_loop()
        self._inbox: collections.deque[Message] = collections.deque()
        self._inbox_event = asyncio.Event()
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._next_id = 0
        self._send_lock = asyncio.Lock()
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._mid_frame = False
        self._reading = True
        self._closed = False
        self._lost = self._loop.create_future()
        self._keepalive: asyncio.Task | None = None
        self._sinks: set[VectorSink] = set()
        self._scratch: list[list[bytearray]] = []  # pool of receive slot pairs, see VectorSink
        self._discard_mem: memoryview | None = None
        self._awaiting_since = 0.0
        self._early_close_code: str | None = None
        self.on_made: Callable[[Connection], None] | None = None  # the server's admission check
        self.last_recv = self.last_send = time.monotonic()

    # ---- public API -------------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def bytes_in(self) -> int:
        return self.reader.bytes_in

    @property
    def known_peer(self) -> Peer:
        """The authenticated peer: :func:`wire.serve` and :func:`wire.connect` hand a connection on only after the
        handshake set it (ProtocolError before that)."""
        if self.peer is None:
            raise ProtocolError("the connection has no authenticated peer yet")
        return self.peer

    @property
    def _discard_buf(self) -> memoryview:
        """Scratch for bytes we drop (allocated on first use: most connections never need it)."""
        if self._discard_mem is None:
            self._discard_mem = memoryview(bytearray(64 * 1024))
        return self._discard_mem

    async def request(self, kind: Kind, header: dict[str, Any] | None = None, *,
                      vector: EncodedVector | None = None, timeout: float | None = None) -> Message:
        """Send a request and wait for the reply (matched by id). An ERROR reply raises :class:`RemoteError`; no reply
        within ``timeout`` (default ``Timeouts.request``) raises :class:`WireTimeoutError` (a late reply is dropped)."""
        self._next_id += 1
        msg_id = self._next_id
        fut: asyncio.Future[Message] = self._loop.create_future()
        self._pending[msg_id] = fut
        try:
            await self._send_frame(kind, header, vector, msg_id, None)
            limit = self.timeouts.request if timeout is None else timeout
            try:
                return await asyncio.wait_for(fut, limit)
            except asyncio.TimeoutError:
                raise WireTimeoutError(f"no reply to {Kind(kind).value} within {limit}s") from None
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    fut.result().discard()  # a reply that arrived as we were cancelled must not stall the stream
                raise
        finally:
            self._pending.pop(msg_id, None)

    async def recv(self, timeout: float | None = None) -> Message:
        """The next message that is not a reply; :class:`ConnectionClosed` once closed and drained."""
        while not self._inbox:
            if self._closed:
                raise self._closed_error()
            self._inbox_event.clear()
            try:
                await asyncio.wait_for(self._inbox_event.wait(), timeout)
            except asyncio.TimeoutError:
                raise WireTimeoutError(f"no message within {timeout}s") from None
        msg = self._inbox.popleft()
        self._update_reading()
        return msg

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def close(self, reason: str = "closed", *, code: str | None = None) -> None:
        """Close (idempotent). With ``code``, first tell the peer why in an ERROR frame. Waits for every task."""
        self._shutdown(ConnectionClosed(reason), code=code)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the transport is gone and every task of this connection has ended."""
        try:
            await asyncio.wait_for(asyncio.shield(self._lost), 5.0)
        except asyncio.TimeoutError:
            if self.transport is not None:
                self.transport.abort()
        tasks = [t for t in [self._keepalive, *(s.task for s in self._sinks)] if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- what a received Message asks of its connection (wire.message) -----------------------------------------
    def check_open(self) -> None:
        """Raise :class:`ConnectionClosed` (saying why) once this connection is closed or closing."""
        self._check_open()

    async def receive_into(self, desc: VectorDesc, view: memoryview, *, digest: bool,
                           progress: Callable[[int], None] | None = None) -> bytes | None:
        """Receive the payload described by ``desc`` (the next bytes on the stream) into ``view`` (checked by
        :func:`wire.codec.check_dest`); its BLAKE3-256 when ``digest``. Cancelling this call closes the connection
        (half a payload is left on the stream)."""
        self._check_open()
        sink = VectorSink(desc, view, digest=digest, scratch=self._scratch, wake=self._pump, on_error=self._fail,
                          progress=progress)
        self._sinks.add(sink)
        try:
            self._attach(sink)
            return await sink.result()
        except asyncio.CancelledError:
            self._shutdown(ConnectionClosed("vector receive cancelled"), code="cancelled")
            raise
        finally:
            self._sinks.discard(sink)

    def discard_payload(self, size: int) -> None:
        """Skip the next ``size`` payload bytes of the stream (a message whose vector nobody reads)."""
        if size:
            self._attach(DiscardSink(size, self._discard_buf))

    def start(self) -> None:
        """Start heartbeats and the idle deadline (done by serve/connect after the handshake)."""
        if self._keepalive is None and not self._closed:
            self._keepalive = self._loop.create_task(self._keep_alive())

    # ---- receiving --------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tcp = cast(asyncio.Transport, transport)  # a stream protocol's transport is a Transport
        self.tx_codec.loopback = is_loopback(transport.get_extra_info("peername"))
        high = self.limits.max_write_buffer
        tcp.set_write_buffer_limits(high=high, low=high // 4)
        if self._closed:  # refused before it was made (e.g. the server is busy)
            if self._early_close_code is not None:
                transport.write(encode_frame(Kind.ERROR, {"code": self._early_close_code,  # type: ignore[attr-defined]
                                                          "reason": str(self.close_error)[:500]}))
            transport.close()
        elif self.on_made is not None:
            self.on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self._closed:
            try:
                return self.reader.get_buffer(sizehint)
            except WireError as exc:
                self._fail(exc)
        return self._discard_buf

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        self.last_recv = time.monotonic()
        try:
            self.reader.buffer_updated(nbytes)
        except WireError as exc:
            self._fail(exc)
            return
        except Exception:  # a bug of ours, not the peer's: log it and drop only this connection
            log.exception("internal error reading from %s", self.peer)
            self._shutdown(ConnectionClosed("internal error"), code="internal")
            return
        self._update_reading()

    def eof_received(self) -> bool:
        self._shutdown(ConnectionClosed("peer closed the connection"), code=None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown(ConnectionClosed(f"connection lost: {exc}" if exc else "peer closed the connection"),
                       code=None)
        if not self._lost.done():
            self._lost.set_result(None)

    def _on_frame(self, frame: Frame) -> None:
        if self.allowed_kinds is not None and frame.kind not in self.allowed_kinds:
            raise RoleError(f"{frame.kind.value} not allowed here")
        if frame.kind is Kind.HEARTBEAT:
            return
        if frame.kind is Kind.ERROR and frame.reply_to is None:
            code, reason = _error_fields(frame.header)
            self._shutdown(ConnectionClosed(f"peer closed: {code}: {reason}", remote_code=code), code=None)
            return
        msg = Message(frame, self)
        if frame.payload_len:
            self._awaiting_since = time.monotonic()
        if frame.reply_to is None:
            self._inbox.append(msg)
            self._inbox_event.set()
            return
        fut = self._pending.pop(frame.reply_to, None)
        if fut is None or fut.done():
            msg.discard()  # a reply nobody waits for any more (or never did)
        elif frame.kind is Kind.ERROR:
            fut.set_exception(RemoteError(*_error_fields(frame.header)))
        else:
            fut.set_result(msg)

    def _attach(self, sink: Any) -> None:
        try:
            self.reader.attach(sink)
        except WireError as exc:
            self._fail(exc)
        self._update_reading()

    def _pump(self) -> None:
        if self._closed:
            return
        try:
            self.reader.pump()
        except WireError as exc:
            self._fail(exc)
        self._update_reading()

    def _update_reading(self) -> None:
        if self._closed or self.transport is None:
            return
        want = not self.reader.blocked and len(self._inbox) < self.limits.max_inbox
        if want != self._reading:
            self._reading = want
            if want:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    # ---- lifetime ---------------------------------------------------------------------------------------------
    async def _keep_alive(self) -> None:
        t = self.timeouts
        tick = min(t.heartbeat, t.idle) / 4
        while not self._closed:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if self.reader.awaiting_sink and now - self._awaiting_since > t.idle:
                self._shutdown(WireTimeoutError("a vector payload was never read"), code="timeout")
                return
            if not self._reading:
                self.last_recv = now  # we stopped reading, not the peer's fault
            if now - self.last_recv > t.idle:
                self._shutdown(WireTimeoutError(f"nothing received for {t.idle}s"), code="timeout")
                return
            if now - self.last_send >= t.heartbeat and not self._send_lock.locked():
                try:
                    await self.send(Kind.HEARTBEAT)
                except WireError:
                    return

    def _check_open(self) -> None:
        if self._closed or self.transport is None or self.transport.is_closing():
            raise self._closed_error()

    def _closed_error(self) -> ConnectionClosed:
        exc = self.close_error
        if isinstance(exc, ConnectionClosed):
            return ConnectionClosed(exc.reason, exc.remote_code)
        return ConnectionClosed(str(exc) if exc else "not connected", getattr(exc, "code", None))

    def _fail(self, exc: WireError) -> None:
        """The peer broke the protocol: tell it why, then close."""
        if isinstance(exc, ProtocolError):  # before authentication the server counts it (rate-limited log)
            log.log(logging.WARNING if self.peer is not None else logging.DEBUG, "closing connection to %s: %s (%s)",
                    self.peer, exc, exc.code)
        self._shutdown(exc, code=exc.code)

    def _shutdown(self, exc: WireError, *, code: str | None, abort: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_error = exc
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if code is not None and not self._mid_frame:
                try:
                    transport.write(encode_frame(Kind.ERROR, {"code": code, "reason": str(exc)[:500]}))
                except Exception:  # the ERROR frame is a courtesy; closing must not fail
                    pass
            transport.abort() if abort else transport.close()
        elif transport is None:
            self._early_close_code = code  # closed before the transport arrived: connection_made finishes the job
        closed = self._closed_error()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(closed)
                fut.exception()
        self._pending.clear()
        for sink in list(self._sinks):
            sink.fail(closed)
        self._inbox_event.set()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if self._keepalive is not None and self._keepalive is not asyncio.current_task():
            self._keepalive.cancel()


def _error_fields(header: dict[str, Any]) -> tuple[str, str]:
    code, reason = header.get("code"), header.get("reason")
    return (code if type(code) is str else "unknown")[:64], (reason if type(reason) is str else "")[:500]
