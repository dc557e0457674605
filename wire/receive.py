"""Receiving one vector payload: a :class:`wire.reader.Sink` that decodes and hashes chunks while later ones arrive.

Codec ``none``: the transport writes straight into the destination; each completed chunk is hashed in a worker thread.
Compressed codecs: chunk k is received into one of two reused scratch slots (a pair taken from the connection's
pool for the duration of this vector), then decompressed into its slice of the
destination and hashed in a worker thread, while chunk k+1 arrives in the other slot (reading pauses when both are
busy). Chunks are processed in order by one task, so the streaming digest equals ``digest_bytes(dest)``.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable

from wire.codec import Codec, VectorDesc, decode_chunk_into
from wire.digest import StreamingDigest
from wire.errors import VectorError

_SLOTS = 2


class VectorSink:
    """Streams one payload described by ``desc`` into ``dest`` (the destination's byte view, already checked)."""

    def __init__(self, desc: VectorDesc, dest: memoryview, *, digest: bool, scratch: list[list[bytearray]],
                 wake: Callable[[], None], on_error: Callable[[VectorError], None],
                 progress: Callable[[int], None] | None = None) -> None:
        self.desc = desc
        self._progress = progress
        self._dest = dest
        self._hasher = StreamingDigest() if digest else None
        self._wake = wake
        self._on_error = on_error
        self._k = 0  # chunk being received
        self._filled = 0  # bytes of chunk k received
        self._compressed = desc.codec is not Codec.NONE
        self._pool = scratch
        if self._compressed:
            # A pair of slots from the connection's pool, returned when every chunk is decoded: a second vector may
            # start arriving while the worker still decodes this one's last chunk.
            need = max(desc.sizes, default=0)
            self._pair = scratch.pop() if scratch else []
            self._pair[:] = [b if len(b) >= need else bytearray(need)
                             for b in self._pair + [bytearray()] * (_SLOTS - len(self._pair))]
            self._slots = [memoryview(b) for b in self._pair]
            self._busy = [False] * _SLOTS
        self._queue: asyncio.Queue[int | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._done: asyncio.Future[bytes | None] = loop.create_future()
        self._task = loop.create_task(self._work())
        if desc.nchunks == 0:
            self._queue.put_nowait(None)

    def region(self) -> memoryview | None:
        if self._k >= self.desc.nchunks:
            return None
        size = self.desc.sizes[self._k]
        if not self._compressed:
            start, _ = self.desc.raw_range(self._k)
            return self._dest[start + self._filled:start + size]
        slot = self._k % _SLOTS
        if self._busy[slot]:
            return None
        return self._slots[slot][self._filled:size]

    def advance(self, n: int) -> None:
        self._filled += n
        if self._filled < self.desc.sizes[self._k]:
            return
        if self._compressed:
            self._busy[self._k % _SLOTS] = True
        if self._compressed or self._hasher is not None:  # raw bytes not hashed need no work
            self._queue.put_nowait(self._k)
        if not self._compressed and self._progress is not None:  # the raw bytes are in place now
            self._progress(self.desc.raw_range(self._k)[1])
        self._k += 1
        self._filled = 0
        if self._k == self.desc.nchunks:
            self._queue.put_nowait(None)

    def _process(self, k: int) -> None:
        """Blocking part, in a worker thread: decompress chunk k (if compressed) and hash its raw bytes."""
        if self._compressed:
            slot = self._slots[k % _SLOTS][:self.desc.sizes[k]]
            decode_chunk_into(self.desc, k, slot, self._dest)
        if self._hasher is not None:
            start, end = self.desc.raw_range(k)
            self._hasher.update(self._dest[start:end])

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while (k := await self._queue.get()) is not None:
            try:
                await loop.run_in_executor(None, self._process, k)
            except VectorError as exc:
                self.fail(exc)
                self._on_error(exc)
                return
            if self._compressed:
                self._busy[k % _SLOTS] = False
                self._wake()
                if self._progress is not None:
                    self._progress(self.desc.raw_range(k)[1])
        if self._compressed:
            self._slots = []
            self._pool.append(self._pair)
        if not self._done.done():
            self._done.set_result(self._hasher.digest() if self._hasher is not None else None)

    async def result(self) -> bytes | None:
        """Wait until every chunk is decoded and hashed; the digest (or ``None``)."""
        return await self._done

    def fail(self, exc: BaseException) -> None:
        """End the receive with ``exc`` (the connection closed under it); the worker task is cancelled."""
        if not self._done.done():
            self._done.set_exception(exc)
            self._done.exception()  # retrieved here: nobody may be awaiting it
        if self._task is not asyncio.current_task():
            self._task.cancel()

    @property
    def task(self) -> asyncio.Task:
        return self._task
