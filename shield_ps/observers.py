"""Observers (``shield-ps watch``): read-only peers that receive the run's events.

Each observer has a bounded queue filled by the event sink on the step loop's thread (``put_nowait``: never a
wait). A watcher that cannot keep up fills its queue and is disconnected; training never slows down for it. A new
observer first receives the run's ``job`` event and the most recent events, so its view starts complete.
"""
from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from shield_ps.events import Event, EventSink
from wire import Connection, ConnectionClosed, Kind, WireError
from wire.messages import EventMessage

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1024
HISTORY = 512


class ObserverHub:
    """Fans the event stream out to connected observers."""

    def __init__(self, sink: EventSink) -> None:
        self._queues: dict[int, asyncio.Queue[Event | None]] = {}
        self._job: Event | None = None
        self._history: collections.deque[Event] = collections.deque(maxlen=HISTORY)
        self._slow: set[int] = set()
        sink.subscribe(self._publish)

    def _publish(self, event: Event) -> None:
        if event["kind"] == "job":
            self._job = event
        else:
            self._history.append(event)
        for peer_id, queue in list(self._queues.items()):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._slow.add(peer_id)
                self._queues.pop(peer_id, None)

    async def serve(self, conn: Connection) -> None:
        """Serve one observer until it leaves, falls behind, or the run ends."""
        msg = await conn.recv(timeout=30.0)
        if msg.kind is not Kind.SUBSCRIBE:
            await conn.close(f"an observer must SUBSCRIBE first, not send {msg.kind.value}", code="protocol")
            return
        queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_LIMIT)
        for event in ([self._job] if self._job else []) + list(self._history)[-(QUEUE_LIMIT // 2):]:
            queue.put_nowait(event)
        peer_id = conn.known_peer.id
        self._queues[peer_id] = queue
        log.info("observer %s attached", conn.known_peer.name or peer_id)
        try:
            while True:
                queued = await queue.get()
                if peer_id in self._slow:
                    await conn.close("observer too slow: dropped", code="slow")
                    return
                if queued is None:
                    return
                await conn.send(Kind.EVENT, EventMessage(_plain(queued)).header())
        except (WireError, ConnectionClosed):
            pass
        finally:
            self._queues.pop(peer_id, None)
            self._slow.discard(peer_id)

    async def close(self) -> None:
        """End every observer's stream after what is queued (the summary included)."""
        for queue in list(self._queues.values()):
            try:
                queue.put_nowait(None)
            except asyncio.QueueFull:
                pass
        for _ in range(200):
            if not self._queues:
                return
            await asyncio.sleep(0.01)


def _plain(value: Any) -> Any:
    """Events may hold tuples; the wire takes lists only."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
