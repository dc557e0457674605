"""The K worker slots of a run and the agents connected to them.

An agent is given the lowest free slot during its handshake (:meth:`WorkerPool.admit`), bound to its connection
once authenticated, and marked ready once it has answered JOB. A slot whose agent disconnects becomes free again;
a reconnecting agent (or a replacement) takes it over at the next step. Every state change is reported to the
event stream as a ``worker`` event.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from shield_ps.events import WorkerState
from wire import AuthError, Connection, Role

log = logging.getLogger(__name__)

#: Observers get ids from here up, so they never collide with worker slots.
OBSERVER_ID_BASE = 1_000_000
_STALE_RESERVATION_S = 30.0


@dataclass
class AgentLink:
    """The PS's view of one connected agent."""

    worker: int
    conn: Connection
    name: str
    files: tuple[int, ...]
    ready: bool = False
    state: WorkerState = WorkerState.CONNECTED
    compute_s: float | None = None
    address: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class WorkerPool:
    """K slots; each holds at most one :class:`AgentLink`."""

    def __init__(self, worker_files: tuple[tuple[int, ...], ...], emit: Callable[..., Any]) -> None:
        self.K = len(worker_files)
        self._files = worker_files
        self._emit = emit
        self._links: list[AgentLink | None] = [None] * self.K
        self._reserved: dict[int, float] = {}
        self._observer_ids = itertools.count(OBSERVER_ID_BASE)
        self.changed = asyncio.Event()
        self.step = 0

    def admit(self, role: Role, name: str) -> int:
        """Assign an id during the handshake: the lowest free slot for an agent (AuthError when all K are taken)."""
        if role is Role.OBSERVER:
            return next(self._observer_ids)
        now = time.monotonic()
        for slot in range(self.K):
            reserved_at = self._reserved.get(slot)
            if self._links[slot] is None and (reserved_at is None or now - reserved_at > _STALE_RESERVATION_S):
                self._reserved[slot] = now
                return slot
        raise AuthError(f"all K={self.K} worker slots are taken")

    def bind(self, conn: Connection) -> AgentLink:
        slot = conn.peer.id
        self._reserved.pop(slot, None)
        if not 0 <= slot < self.K or self._links[slot] is not None:
            raise AuthError(f"worker slot {slot} is not available")
        address = conn.transport.get_extra_info("peername") if conn.transport is not None else None
        link = AgentLink(slot, conn, conn.peer.name, self._files[slot],
                         address=f"{address[0]}:{address[1]}" if address else None)
        self._links[slot] = link
        return link

    def set_ready(self, link: AgentLink) -> None:
        link.ready = True
        self.set_state(link, WorkerState.CONNECTED)
        self.changed.set()

    def release(self, link: AgentLink) -> None:
        if self._links[link.worker] is link:
            self._links[link.worker] = None
            self.set_state(link, WorkerState.LEFT)
            self.changed.set()

    def set_state(self, link: AgentLink, state: WorkerState, compute_s: float | None = None) -> None:
        if compute_s is not None:
            link.compute_s = compute_s
        if state != link.state or state in (WorkerState.CONNECTED, WorkerState.LEFT):
            link.state = state
            self._emit("worker", step=self.step, worker=link.worker, state=state.value, compute_s=link.compute_s,
                       address=link.address, **({"class": link.extra["class"]} if "class" in link.extra else {}))

    def link(self, worker: int) -> AgentLink | None:
        link = self._links[worker]
        return link if link is not None and link.ready else None

    def ready_links(self) -> list[AgentLink]:
        return [link for link in self._links if link is not None and link.ready]

    def connected(self) -> list[AgentLink]:
        return [link for link in self._links if link is not None]

    async def wait_ready(self, count: int, timeout: float) -> int:
        """Wait until ``count`` agents are ready or ``timeout`` passes; returns how many are ready."""
        deadline = time.monotonic() + timeout
        while len(self.ready_links()) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return len(self.ready_links())
