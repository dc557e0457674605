"""Phase 1 of a step: STEP(t, lr) and the parameters to every ready agent, each send bounded by its own deadline.

The parameters are snapshotted into one of two reused buffers (step t uses buffer t % 2) and sent from it without a
copy. Each send runs in its own task with the budget ``latency + bytes / min_bandwidth``; a send that misses it is
cancelled, which closes that connection (half a frame is on the wire), and the worker is reported slow. The next
broadcast never waits for a slow reader: a worker whose previous STEP is still being sent is skipped for this step
(it is erased), and only the sends still reading the buffer about to be overwritten (two steps old, each bounded by
its own deadline) are waited for.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import numpy as np

from shield_ps.phases.deadlines import Deadlines
from shield_ps.pool import AgentLink
from wire import ConnectionClosed, Kind, WireError, encode_vector

log = logging.getLogger(__name__)


class Broadcaster:
    """Owns the two parameter snapshots and the in-flight STEP sends."""

    def __init__(self, d: int, deadlines: Deadlines, codec: str, level: int,
                 on_sent: Callable[[AgentLink], None], on_slow: Callable[[int, str], None]) -> None:
        self._buffers = (np.empty(d, dtype=np.float32), np.empty(d, dtype=np.float32))
        self._users: tuple[set[asyncio.Task[None]], set[asyncio.Task[None]]] = (set(), set())
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._deadlines = deadlines
        self._codec, self._level = codec, level
        self._on_sent, self._on_slow = on_sent, on_slow

    async def start(self, step: int, lr: float, params: np.ndarray,
                    links: list[AgentLink]) -> tuple[list[AgentLink], list[int]]:
        """Snapshot ``params`` and start sending STEP to ``links``; returns the links sent to and the workers skipped
        because their previous STEP is still on its way."""
        index = step % 2
        users = self._users[index]
        if users:  # sends of step t-2 still reading this buffer: each is bounded by its own deadline
            await asyncio.wait(list(users))
        buffer = self._buffers[index]
        np.copyto(buffer, params)
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(None, encode_vector, buffer, self._codec, self._level)
        budget = self._deadlines.transfer(sum(encoded.desc.sizes))
        sent, busy = [], []
        for link in links:
            previous = self._inflight.get(link.worker)
            if previous is not None and not previous.done():
                busy.append(link.worker)
                continue
            task = loop.create_task(self._send(link, step, lr, encoded, budget))
            self._inflight[link.worker] = task
            users.add(task)
            task.add_done_callback(users.discard)
            sent.append(link)
        if busy:
            log.warning("step %d: workers %s are still receiving the previous step: erased for this step", step, busy)
        return sent, busy

    async def _send(self, link: AgentLink, step: int, lr: float, encoded: Any, budget: float) -> None:
        try:
            await asyncio.wait_for(link.conn.send(Kind.STEP, {"step": step, "lr": lr}, vector=encoded), budget)
            self._on_sent(link)
        except asyncio.TimeoutError:
            reason = f"took more than {budget:.1f}s to receive STEP {step}"
            log.warning("step %d: worker %d %s: disconnected", step, link.worker, reason)
            self._on_slow(link.worker, reason)
            await link.conn.close(reason, code="timeout")
        except (WireError, ConnectionClosed) as exc:
            log.info("step %d: could not send to worker %d: %s", step, link.worker, exc)

    async def close(self) -> None:
        """Wait for every send still in flight (each bounded by its deadline)."""
        tasks = [t for t in self._inflight.values() if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
