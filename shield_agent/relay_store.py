"""The relay's store: the verified parameter vectors of this process's slots, by step, offered to other agents as
they arrive (cut-through), and who is still reading each buffer (see :mod:`shield_agent.relay`)."""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["RelayAborted", "RelayEntry", "RelayStore"]

#: Steps whose vectors a store keeps (a slot's two parameter buffers).
_KEPT_STEPS = 2


class RelayAborted(Exception):
    """The vector being forwarded failed upstream (wrong digest, or its receive ended early)."""


@dataclass(eq=False)
class RelayEntry:
    """A step's vector in this process: being received into ``buffer`` (``filled`` bytes so far), received and
    checked against ``digest`` (``done``), or failed."""

    step: int
    digest: bytes
    buffer: np.ndarray
    filled: int = 0
    state: str = "filling"  # "done", "failed"


class RelayStore:
    """The parameter vectors of this process's slots, by step, and who is still reading each buffer.

    A vector is offered as soon as its receive starts, so a relay forwards each chunk as it arrives (cut-through): a
    tree of depth k then costs about one transfer plus k chunk times, not k transfers. Only a receive that ends with
    the right digest becomes ``done``; sibling slots take only those, and every receiver checks the digest itself.
    """

    def __init__(self) -> None:
        self._entries: dict[int, RelayEntry] = {}
        self._readers: dict[int, set[asyncio.Task[None]]] = {}  # id(buffer) -> the sends reading it
        self._waiters: list[asyncio.Future[None]] = []
        self.local_workers: set[int] = set()

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _change(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter

    def joined(self, worker: int) -> None:
        self.local_workers.add(worker)
        self._changed()

    def left(self, worker: int) -> None:
        self.local_workers.discard(worker)
        self._changed()

    def begin(self, step: int, digest: bytes, buffer: np.ndarray) -> RelayEntry:
        """A slot starts receiving ``step``'s vector into ``buffer``; report on the entry with :meth:`progress` and
        :meth:`finish`. It is offered to others unless another slot already offers that step."""
        entry = RelayEntry(step, digest, buffer)
        current = self._entries.get(step)
        if current is None or current.state == "failed":
            self._entries[step] = entry
            for old in sorted(self._entries)[:-_KEPT_STEPS]:
                del self._entries[old]
            self._changed()
        return entry

    def progress(self, entry: RelayEntry, nbytes: int) -> None:
        entry.filled = max(entry.filled, nbytes)
        self._changed()

    def finish(self, entry: RelayEntry, ok: bool) -> None:
        """The receive ended: with the right digest (``ok``), or not (whoever forwards it is cut off)."""
        entry.state = "done" if ok else "failed"
        if ok:
            entry.filled = entry.buffer.nbytes
        self._changed()

    async def get(self, step: int, digest: bytes, timeout: float, *, complete: bool = False,
                  while_connected: bool = False) -> RelayEntry | None:
        """``step``'s entry with ``digest`` once it is offered (``complete``: once received and checked); None
        after ``timeout`` seconds, or (``while_connected``) as soon as no slot of this process is connected to the
        PS, since then none will receive it (the asker turns to the PS at once instead of at the end of its wait)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    entry = self._entries.get(step)
                    if (entry is not None and entry.digest == digest and entry.state != "failed"
                            and (entry.state == "done" or not complete)):
                        return entry
                    if while_connected and not self.local_workers:
                        return None
                    await self._change()
        except TimeoutError:
            return None

    async def filled(self, entry: RelayEntry, nbytes: int) -> None:
        """Return once ``entry``'s first ``nbytes`` bytes are in place; :class:`RelayAborted` if it failed."""
        while entry.filled < nbytes:
            if entry.state == "failed":
                raise RelayAborted(f"the vector of step {entry.step} failed upstream")
            await self._change()

    @contextlib.contextmanager
    def reading(self, buffer: np.ndarray, send: asyncio.Task[None]) -> Any:
        """``send`` is sending ``buffer`` to another agent (its owner cancels it before overwriting the buffer)."""
        readers = self._readers.setdefault(id(buffer), set())
        readers.add(send)
        try:
            yield buffer
        finally:
            readers.discard(send)
            if not readers:
                del self._readers[id(buffer)]
            self._changed()

    async def reclaim(self, buffer: np.ndarray) -> None:
        """Before overwriting ``buffer`` (with the step after next): withdraw it and cancel the sends still reading
        it, so an agent that reads slowly never holds up our step; each such send is two steps old."""
        for step, entry in list(self._entries.items()):
            if entry.buffer is buffer:
                del self._entries[step]
        for send in self._readers.get(id(buffer), ()):
            send.cancel()
        while id(buffer) in self._readers:
            await self._change()
