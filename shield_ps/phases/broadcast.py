"""Phase 1 of a step: STEP(t, lr) and the parameters to every ready agent, each send bounded by its own deadline.

The parameters are snapshotted into one of two reused buffers (step t uses buffer t % 2) and sent from it without a
copy. Each send runs in its own task with the budget ``latency + bytes / min_bandwidth``; a send that misses it is
cancelled, which closes that connection (half a frame is on the wire), and the worker is reported slow. The next
broadcast never waits for a slow reader: a worker whose previous STEP is still being sent is skipped for this step
(it is erased), and only the sends still reading the buffer about to be overwritten (two steps old, each bounded by
its own deadline) are waited for.

With the relay broadcast (:mod:`shield_ps.phases.relay`) the vector goes to the tree's roots only; every other worker
gets a STEP header naming its source and how long to wait for it, and the whole vector again only when it asks
(:meth:`Broadcaster.send_direct`, once per worker and step).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import numpy as np

from shield_ps.phases.deadlines import Deadlines
from shield_ps.phases.relay import Source
from shield_ps.pool import AgentLink
from wire import Codec, ConnectionClosed, EncodedVector, Kind, WireError, vector_digest
from wire.messages import RelayInstruction, StepOrder

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
        self.codecs: dict[str, int] = {}  # codec -> links, of the last broadcast
        self._step: tuple[int, float, bytes] | None = None  # the last broadcast's step, lr and digest
        self.direct: set[int] = set()  # workers sent the whole vector in the last broadcast (roots, fallbacks)

    async def start(self, step: int, lr: float, params: np.ndarray, links: list[AgentLink],
                    sources: dict[int, Source | None] | None = None) -> tuple[list[AgentLink], list[int]]:
        """Snapshot ``params`` and start sending STEP to ``links``; returns the links sent to and the workers skipped
        because their previous STEP is still on its way. ``sources`` (relay broadcast) maps a worker to where it
        takes the vector from; a worker with no source (or every worker, without ``sources``) gets it from us."""
        index = step % 2
        users = self._users[index]
        if users:  # sends of step t-2 still reading this buffer: each is bounded by its own deadline
            await asyncio.wait(list(users))
        buffer = self._buffers[index]
        np.copyto(buffer, params)
        loop = asyncio.get_running_loop()
        sent, busy = [], []
        ready = []
        for link in links:
            previous = self._inflight.get(link.worker)
            if previous is not None and not previous.done():
                busy.append(link.worker)
            else:
                ready.append(link)
        sources = sources or {}
        direct = [link for link in ready if sources.get(link.worker) is None]
        encoded = await self._encode_per_link(buffer, direct)
        digest = await loop.run_in_executor(None, vector_digest, buffer)  # agents check it before computing
        self._step, self.direct = (step, lr, digest), {link.worker for link in direct}
        hop = self._deadlines.relay_hop(buffer.nbytes)
        for link in ready:
            source = sources.get(link.worker)
            if source is None:
                vector = encoded[link.worker]
                self._start_send(link, step, lr, digest, vector, self._deadlines.transfer(sum(vector.desc.sizes)))
            else:
                relay = RelayInstruction(source.worker, source.address[0], source.address[1],
                                         round(source.depth * hop, 3))
                self._start_send(link, step, lr, digest, None, self._deadlines.latency, relay)
            sent.append(link)
        if busy:
            log.warning("step %d: workers %s are still receiving the previous step: erased for this step", step, busy)
        return sent, busy

    def send_direct(self, link: AgentLink, step: int) -> bool:
        """Start sending the whole vector of the current step to ``link`` (its relay failed); False when ``step`` is
        not the current one, or it was already sent the vector in this step."""
        if self._step is None or self._step[0] != step or link.worker in self.direct:
            return False
        previous = self._inflight.get(link.worker)
        if previous is not None and not previous.done():
            return False
        self.direct.add(link.worker)
        self._track(link, step, asyncio.get_running_loop().create_task(self._send_direct(link, step)))
        return True

    async def _send_direct(self, link: AgentLink, step: int) -> None:
        assert self._step is not None
        _, lr, digest = self._step
        encoded = (await self._encode_per_link(self._buffers[step % 2], [link], count=False))[link.worker]
        await self._send(link, step, lr, digest, encoded, self._deadlines.transfer(sum(encoded.desc.sizes)), None)

    def _start_send(self, link: AgentLink, step: int, lr: float, digest: bytes, vector: EncodedVector | None,
                    budget: float, relay: RelayInstruction | None = None) -> None:
        self._track(link, step, asyncio.get_running_loop().create_task(
            self._send(link, step, lr, digest, vector, budget, relay)))

    def _track(self, link: AgentLink, step: int, task: asyncio.Task[None]) -> None:
        """``task`` sends to ``link`` from step ``step``'s buffer (held until it ends: see :meth:`start`)."""
        self._inflight[link.worker] = task
        users = self._users[step % 2]
        users.add(task)
        task.add_done_callback(users.discard)

    async def _encode_per_link(self, buffer: np.ndarray, links: list[AgentLink],
                               count: bool = True) -> dict[int, EncodedVector]:
        """``buffer`` encoded once per codec some link uses: ``--codec auto`` picks per link from its measured rate
        (wire.autocodec), a fixed codec is the same for all. Also counts the codecs used (``codecs``)."""
        loop = asyncio.get_running_loop()
        picks = {link.worker: link.conn.pick_codec(self._codec, self._level) for link in links}
        encodings: dict[tuple[Codec, int], EncodedVector] = {}
        for link in links:
            pick = picks[link.worker]
            if pick not in encodings:
                encodings[pick] = await loop.run_in_executor(None, link.conn.encode_timed, buffer, *pick)
        if count:
            self.codecs = {}
        for codec, _ in picks.values():
            self.codecs[codec.value] = self.codecs.get(codec.value, 0) + 1
        return {worker: encodings[pick] for worker, pick in picks.items()}

    async def _send(self, link: AgentLink, step: int, lr: float, digest: bytes, encoded: EncodedVector | None,
                    budget: float, relay: RelayInstruction | None) -> None:
        header = StepOrder(step, lr, digest, relay).header()
        try:
            started = time.perf_counter()
            await asyncio.wait_for(link.conn.send(Kind.STEP, header, vector=encoded), budget)
            if encoded is not None:
                self._deadlines.seed(time.perf_counter() - started, sum(encoded.desc.sizes))
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
