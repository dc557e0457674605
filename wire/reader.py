"""The receive state machine: bytes in, frames out, payloads streamed into sinks (pure: no sockets, no asyncio).

:class:`FrameReader` follows ``asyncio.BufferedProtocol``: the transport asks :meth:`FrameReader.get_buffer` where to
write and reports with :meth:`FrameReader.buffer_updated`. Prefixes and headers land in one reused read buffer (many
small frames per ``recv``); a payload is written by the transport straight into its sink's memory (a slice of the
receiver's destination array, or a reused scratch slot for a compressed chunk), so a 45 MB vector is never copied.

After a frame with a payload the reader parses nothing more until the owner attaches a sink (:meth:`attach`); while
it waits, or while the sink has no room, :attr:`blocked` is true and the transport must pause reading.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from wire.errors import FrameError, LimitError
from wire.frames import PREFIX_SIZE, Frame, Limits, parse_header, parse_prefix

_MIN_READ = 64 * 1024


class Sink(Protocol):
    """Where a payload goes. ``region()`` is the next writable memory (never past the payload's end) or ``None`` when
    the sink cannot take more now; ``advance(n)`` reports that ``n`` bytes were written at the start of that region."""

    def region(self) -> memoryview | None: ...

    def advance(self, n: int) -> None: ...


class DiscardSink:
    """A sink that drops ``remaining`` bytes (unwanted payloads, replies that arrive after their request timed out)."""

    def __init__(self, remaining: int, scratch: memoryview) -> None:
        self._remaining = remaining
        self._scratch = scratch

    def region(self) -> memoryview:
        return self._scratch[:min(len(self._scratch), self._remaining)]

    def advance(self, n: int) -> None:
        self._remaining -= n


class FrameReader:
    """Incremental frame parser with zero-copy payload delivery; ``on_frame`` is called once per parsed frame."""

    def __init__(self, limits: Limits, on_frame: Callable[[Frame], None], *, header_cap: int | None = None) -> None:
        self.limits = limits
        self.header_cap = limits.max_header_bytes if header_cap is None else header_cap
        self._on_frame = on_frame
        # Before authentication (a small header_cap) the buffer is small too: a pre-auth peer costs ~8 KiB; it grows
        # to the full size with :meth:`expand` once the peer is authenticated.
        self._buf = bytearray(2 * (PREFIX_SIZE + self.header_cap) if header_cap else 4 * _MIN_READ)
        self._view = memoryview(self._buf)
        self._start = 0  # first unparsed byte in _buf
        self._end = 0  # end of received bytes in _buf
        self._prefix: tuple[int, int] | None = None  # parsed (header_len, payload_len) of the current frame
        self._payload_left = 0  # bytes of the current payload still to deliver (0 = parsing headers)
        self._sink: Sink | None = None
        self._direct = False  # did the last get_buffer hand out the sink's memory?
        self._pumping = False
        self.bytes_in = 0
        self.frames_in = 0

    def expand(self, header_cap: int) -> None:
        """Allow headers up to ``header_cap`` bytes and grow the read buffer to its full size (after the handshake)."""
        self.header_cap = header_cap
        size = max(4 * _MIN_READ, 2 * (PREFIX_SIZE + header_cap))
        if len(self._buf) < size:
            n = self._end - self._start
            buf = bytearray(size)
            buf[:n] = self._view[self._start:self._end]
            self._buf, self._view = buf, memoryview(buf)
            self._start, self._end = 0, n

    @property
    def awaiting_sink(self) -> bool:
        """A payload is pending and nobody has attached a sink for it yet."""
        return self._payload_left > 0 and self._sink is None

    @property
    def blocked(self) -> bool:
        """True when reading more would only pile bytes up (no sink yet, or the sink is full)."""
        if self._payload_left == 0:
            return False
        return self._sink is None or self._sink.region() is None

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Memory for the next ``recv_into``: the sink's region when nothing is buffered, else the read buffer."""
        if self._sink is not None and self._start == self._end:
            region = self._sink.region()
            if region is not None and len(region):
                self._direct = True
                return region[:self._payload_left]
        self._direct = False
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < min(_MIN_READ, len(self._buf)) // 4:
            self._compact()
        if self._end == len(self._buf):
            raise LimitError("read buffer full: reading was not paused")  # our flow control failed, not the peer
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        """Account ``nbytes`` written into the last buffer, then parse and deliver what is complete."""
        self.bytes_in += nbytes
        if self._direct:
            self._direct = False
            self._payload_left -= nbytes
            assert self._sink is not None
            self._sink.advance(nbytes)
            if self._payload_left == 0:
                self._sink = None
        else:
            self._end += nbytes
        self.pump()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Push ``data`` through get_buffer/buffer_updated (tests and tools); stops early if the reader blocks."""
        data = memoryview(data).cast("B")
        while len(data) and not self.blocked:
            buf = self.get_buffer()
            n = min(len(buf), len(data))
            buf[:n] = data[:n]
            data = data[n:]
            self.buffer_updated(n)
        if len(data):
            raise BlockingIOError(f"reader blocked with {len(data)} bytes unfed")

    def attach(self, sink: Sink) -> None:
        """Give the pending payload a sink; buffered payload bytes move into it and parsing resumes when it is full."""
        if not self.awaiting_sink:
            raise RuntimeError("no payload is waiting for a sink")
        self._sink = sink
        self.pump()

    def pump(self) -> None:
        """Move buffered bytes into the sink and parse buffered frames; call again when a blocked sink frees up."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while True:
                if self._payload_left:
                    if not self._fill_sink():
                        return
                elif not self._parse_one():
                    return
        finally:
            self._pumping = False

    def _fill_sink(self) -> bool:
        while self._payload_left and self._start < self._end:
            region = self._sink.region() if self._sink is not None else None
            if not region:
                return False
            n = min(len(region), self._end - self._start, self._payload_left)
            region[:n] = self._view[self._start:self._start + n]
            self._start += n
            self._payload_left -= n
            self._sink.advance(n)  # type: ignore[union-attr]
        if self._payload_left:
            return False
        self._sink = None
        return True

    def _parse_one(self) -> bool:
        avail = self._end - self._start
        if self._prefix is None:
            if avail < PREFIX_SIZE:
                return False
            self._prefix = parse_prefix(self._view[self._start:self._start + PREFIX_SIZE], self.limits,
                                        self.header_cap)
        header_len, payload_len = self._prefix
        need = PREFIX_SIZE + header_len
        if avail < need:
            if len(self._buf) - self._start < need:
                self._make_room(need)
            return False
        frame = parse_header(self._view[self._start + PREFIX_SIZE:self._start + need], payload_len, self.limits)
        self._start += need
        self._prefix = None
        self._payload_left = payload_len
        self.frames_in += 1
        self._on_frame(frame)
        return True

    def _compact(self) -> None:
        n = self._end - self._start
        self._view[:n] = self._view[self._start:self._end]
        self._start, self._end = 0, n

    def _make_room(self, need: int) -> None:
        if need > PREFIX_SIZE + self.header_cap:
            raise FrameError("frame header larger than allowed")  # parse_prefix already refused; belt and braces
        if len(self._buf) < need:  # a new buffer, as views of the old one may still be alive
            n = self._end - self._start
            buf = bytearray(max(need, 2 * len(self._buf)))
            buf[:n] = self._view[self._start:self._end]
            self._buf, self._view = buf, memoryview(buf)
            self._start, self._end = 0, n
        else:
            self._compact()
