"""The sending half of a :class:`~wire.conn.Connection`: messages and vectors out as frames, serialised by a lock,
with backpressure (above ``Limits.max_write_buffer`` the sender waits for the peer; a peer that reads nothing for
``Timeouts.send`` seconds is dropped)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from wire.autocodec import MIN_SAMPLE_BYTES, AutoCodec
from wire.codec import Codec, EncodedVector, encode_vector
from wire.errors import ConnectionClosed, WireError, WireTimeoutError
from wire.frames import Kind, Limits, encode_frame
from wire.message import Message, Timeouts


class FrameSender:
    """What a connection sends and how (a mixin of :class:`~wire.conn.Connection`, which owns the state below and
    closes the connection: :meth:`_check_open`, :meth:`_shutdown`)."""

    limits: Limits
    timeouts: Timeouts
    transport: asyncio.Transport | None
    bytes_out: int
    tx_codec: AutoCodec
    last_send: float
    _loop: asyncio.AbstractEventLoop
    _send_lock: asyncio.Lock
    _write_paused: bool
    _drain_waiter: asyncio.Future[None] | None
    _mid_frame: bool
    _closed: bool

    def _check_open(self) -> None:
        raise NotImplementedError

    def _shutdown(self, exc: WireError, *, code: str | None, abort: bool = False) -> None:
        raise NotImplementedError

    async def send(self, kind: Kind, header: dict[str, Any] | None = None, *, vector: EncodedVector | None = None,
                   reply_to: Message | int | None = None) -> None:
        """Send one message (with an already encoded vector, e.g. one parameter vector broadcast to every agent).
        Returns when the frame is handed to the transport, below the backpressure mark; with codec ``none`` only
        once the source array's bytes are out of the process (so it may be changed afterwards)."""
        re = reply_to.id if isinstance(reply_to, Message) else reply_to
        if isinstance(reply_to, Message) and re is None:
            raise ValueError("that message was not a request: it has no id to reply to")
        await self._send_frame(kind, header, vector, None, re)

    async def send_vector(self, kind: Kind, header: dict[str, Any] | None, array: Any, *,
                          codec: Codec | str = Codec.LZ4, level: int = 1, reply_to: Message | int | None = None,
                          **encode_kwargs: Any) -> None:
        """Encode ``array`` (1-D float32) in a worker thread, then :meth:`send` it. ``codec="auto"``: the codec
        :attr:`tx_codec` predicts fastest on this link (:mod:`wire.autocodec`)."""
        codec, level = self.pick_codec(codec, level)
        encoded = await self._loop.run_in_executor(
            None, lambda: self.encode_timed(array, codec, level, **encode_kwargs))
        await self.send(kind, header, vector=encoded, reply_to=reply_to)

    async def send_vector_as_filled(self, kind: Kind, header: dict[str, Any] | None, array: Any,
                                    filled: Callable[[int], Awaitable[None]], *,
                                    reply_to: Message | int | None = None) -> None:
        """Send ``array`` (1-D float32, raw) while it is still being written: before each chunk, ``await
        filled(end)`` must return once the array's first ``end`` bytes are final (see ``progress`` in
        :meth:`Message.read_vector_into`); if it raises, the frame is cut and the connection closed. Relays use it
        to forward a vector chunk by chunk as it arrives."""
        re = reply_to.id if isinstance(reply_to, Message) else reply_to
        await self._send_frame(kind, header, encode_vector(array, Codec.NONE), None, re, before_chunk=filled)

    def pick_codec(self, choice: Codec | str, level: int) -> tuple[Codec, int]:
        """The (codec, level) for the next vector sent here (``auto``: :attr:`tx_codec`'s choice)."""
        return self.tx_codec.resolve(choice, level)

    def encode_timed(self, array: Any, codec: Codec, level: int, **encode_kwargs: Any) -> EncodedVector:
        """:func:`encode_vector`, timed for this link's automatic codec (blocking: run it in an executor)."""
        return self.tx_codec.encode(array, codec, level, **encode_kwargs)

    async def reply(self, to: Message, kind: Kind, header: dict[str, Any] | None = None, *,
                    vector: EncodedVector | None = None) -> None:
        """Answer request ``to``."""
        await self.send(kind, header, vector=vector, reply_to=to)

    # ---- the frames ---------------------------------------------------------------------------------------------
    async def _send_frame(self, kind: Kind, header: dict[str, Any] | None, vector: EncodedVector | None,
                          msg_id: int | None, reply_to: int | None,
                          before_chunk: Callable[[int], Awaitable[None]] | None = None) -> None:
        if vector is not None and not isinstance(vector, EncodedVector):
            raise TypeError("vector must be an EncodedVector (see wire.encode_vector or Connection.send_vector)")
        head = encode_frame(kind, header, msg_id=msg_id, reply_to=reply_to,
                            vector=None if vector is None else vector.desc, limits=self.limits)
        async with self._send_lock:
            self._check_open()
            started = time.perf_counter()
            self._write(head)
            if vector is not None:
                self._mid_frame = True
                try:
                    for k, chunk in enumerate(vector.chunks):
                        if before_chunk is not None:
                            await before_chunk(vector.desc.raw_range(k)[1])
                        self._write(chunk)
                        await self._drain()
                except BaseException:  # e.g. the sender was cancelled: half a frame is on the wire, no way back
                    self._shutdown(ConnectionClosed("send interrupted mid-frame"), code=None, abort=True)
                    raise
                self._mid_frame = False
            await self._drain()
            if vector is None:
                return
            wire_bytes = sum(vector.desc.sizes)
            if vector.desc.codec is Codec.NONE or wire_bytes >= MIN_SAMPLE_BYTES:
                await self._flush()  # raw chunks are views of the caller's array; big frames time the link
            if before_chunk is None:  # a relayed send's time is its source's, not this link's
                self.tx_codec.record_send(wire_bytes, time.perf_counter() - started)

    def _write(self, data: bytes | memoryview) -> None:
        self._check_open()
        self.transport.write(data)  # type: ignore[union-attr]
        self.bytes_out += len(data)
        self.last_send = time.monotonic()

    async def _drain(self) -> None:
        while self._write_paused:
            self._check_open()
            if self._drain_waiter is None or self._drain_waiter.done():
                self._drain_waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drain_waiter), self.timeouts.send)
            except asyncio.TimeoutError:
                exc = WireTimeoutError(f"peer took nothing for {self.timeouts.send}s")
                self._shutdown(exc, code=None, abort=True)
                raise exc from None
        self._check_open()

    async def _flush(self) -> None:
        """Wait until the transport holds none of our bytes (they may be views of the caller's array)."""
        if self.transport is None or self.transport.get_write_buffer_size() == 0:
            return
        high = self.limits.max_write_buffer
        self.transport.set_write_buffer_limits(high=1, low=0)  # pause now, resume at empty
        try:
            await self._drain()
        finally:
            if not self._closed:
                self.transport.set_write_buffer_limits(high=high, low=high // 4)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
