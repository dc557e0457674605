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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    relay: tuple[str, int, bytes] | None = None  # host, port and id of this agent's process's relay server
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
        self._join_seen = 0  # most agents connected at once during the join wait
        self._join_waited = 0.0

    def admit(self, role: Role, name: str) -> int:
        """Assign an id during the handshake: the lowest free slot for an agent (AuthError when all K are taken)."""
        if role is Role.OBSERVER:
            return next(self._observer_ids)
        if role is not Role.AGENT:
            raise AuthError(f"the PS does not take {role.value} connections (relays are served by agents)")
        now = time.monotonic()
        for slot in range(self.K):
            reserved_at = self._reserved.get(slot)
            if self._links[slot] is None and (reserved_at is None or now - reserved_at > _STALE_RESERVATION_S):
                self._reserved[slot] = now
                return slot
        raise AuthError(f"all K={self.K} worker slots are taken")

    def bind(self, conn: Connection) -> AgentLink:
        slot = conn.known_peer.id
        self._reserved.pop(slot, None)
        if not 0 <= slot < self.K or self._links[slot] is not None:
            raise AuthError(f"worker slot {slot} is not available")
        address = conn.transport.get_extra_info("peername") if conn.transport is not None else None
        link = AgentLink(slot, conn, conn.known_peer.name, self._files[slot],
                         address=f"{address[0]}:{address[1]}" if address else None)
        self._links[slot] = link
        self.changed.set()
        return link

    def set_ready(self, link: AgentLink) -> None:
        link.ready = True
        self.set_state(link, WorkerState.CONNECTED)
        self.changed.set()

    def release(self, link: AgentLink, reason: str | None = None) -> None:
        """Free the link's slot; ``reason`` is what the agent's LEAVE said (e.g. ``spot interruption``), if it did."""
        if self._links[link.worker] is link:
            self._links[link.worker] = None
            self.set_state(link, WorkerState.LEFT, reason=reason)
            self.changed.set()

    def set_state(self, link: AgentLink, state: WorkerState, compute_s: float | None = None,
                  reason: str | None = None) -> None:
        if compute_s is not None:
            link.compute_s = compute_s
        if state != link.state or state in (WorkerState.CONNECTED, WorkerState.LEFT):
            link.state = state
            extra = {"reason": reason} if reason is not None else {}
            if "class" in link.extra:
                extra["class"] = link.extra["class"]
            self._emit("worker", step=self.step, worker=link.worker, state=state.value, compute_s=link.compute_s,
                       address=link.address, **extra)

    def link(self, worker: int) -> AgentLink | None:
        link = self._links[worker]
        return link if link is not None and link.ready else None

    def ready_links(self) -> list[AgentLink]:
        return [link for link in self._links if link is not None and link.ready]

    def connected(self) -> list[AgentLink]:
        return [link for link in self._links if link is not None]

    def progress(self) -> tuple[int, int, int]:
        """(ready, loading, missing): agents that answered JOB, agents connected but still loading (importing torch,
        reading data, building the model), and slots nobody has connected to."""
        ready = sum(1 for link in self._links if link is not None and link.ready)
        connected = sum(1 for link in self._links if link is not None)
        return ready, connected - ready, self.K - connected

    async def wait_ready(self, count: int, timeout: float, cap: float | None = None) -> int:
        """Wait until ``count`` agents are ready; returns how many are ready at the end.

        The deadline counts from the last progress (an agent connecting or becoming ready): ``timeout`` seconds
        without progress end the wait, except that while some connected agent is still loading the wait goes on, up
        to ``cap`` seconds in all (default ``timeout``). A ``join`` event reports each change with the time left.
        """
        started = time.monotonic()
        cap_at = started + max(cap or timeout, timeout)
        last, deadline = None, started + timeout
        while True:
            now = time.monotonic()
            ready, loading, missing = current = self.progress()
            if current != last:
                last, deadline = current, min(now + timeout, cap_at)
                self._join_seen = max(self._join_seen, ready + loading)
                self._emit("join", ready=ready, loading=loading, missing=missing,
                           left_s=round(self._join_deadline(deadline, cap_at, loading) - now, 1))
            if ready >= count:
                return ready
            remaining = self._join_deadline(deadline, cap_at, loading) - now
            if remaining <= 0:
                self._join_waited = now - started
                return ready
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    @staticmethod
    def _join_deadline(deadline: float, cap_at: float, loading: int) -> float:
        return cap_at if loading else deadline

    def join_failure(self) -> str:
        """Why the join wait ended with no agent ready: who connected, who became ready, what the rest were doing."""
        ready, loading, missing = self.progress()
        loading_ids = [link.worker for link in self._links if link is not None and not link.ready]
        doing = (f"{loading} still loading (workers {loading_ids[:10]}{'...' if loading > 10 else ''}: importing "
                 "torch, reading data or building the model), " if loading else "")
        return (f"no agent became ready within {self._join_waited:.0f}s of waiting: {self._join_seen} connected, "
                f"{ready} became ready, {doing}{missing} never connected (see --join-timeout; hand-started agents "
                "need the token: shield-agent join HOST:PORT --token-file RUN/token)")
