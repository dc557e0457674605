"""The relay broadcast within one step: the tree, the complaints, and how long a relayed worker is waited for.

The tree comes from :func:`~shield_ps.phases.relay.plan_tree`; the complaints and cooldowns over the run from
:class:`~shield_ps.phases.relay.RelayBook`. Within a step:

* a worker ``k`` hops from the PS waits ``k`` relay hops for the parameters before it asks the PS (``RELAY``); until
  then the gather may not erase it for being late: :meth:`RelayRound.protected_until` keeps it in the step up to the
  end of its relay wait, and, once it has complained, a straggler grace after the complaint (the PS sends it the
  parameters directly). An honest child of a stalling relay therefore computes in the step it was cheated in;
* a worker that stayed silent to the end of its protection without complaining was not waiting on its relay (an
  honest child complains when its wait ends): it is not protected again for a number of steps that doubles with
  each such step, so a silent Byzantine child costs at most one relay wait per such period;
* a complaint counts toward the step it names: one for the current step is recorded at once, one for the step just
  accounted (it crossed the step's end on the wire) is blamed on that step's book entry; anything older or malformed
  is ignored. One complaint per worker and step counts.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from shield_ps.phases.deadlines import Deadlines
from shield_ps.phases.relay import (
    COOLDOWN_STEPS,
    MAX_COOLDOWN_STEPS,
    RelayBook,
    RelayNode,
    Source,
    blame,
    plan_tree,
    slow_uplinks,
)
from shield_ps.pool import AgentLink
from wire.errors import MessageError
from wire.messages import parse_relay_complaint

log = logging.getLogger(__name__)


class RelayRound:
    """The relay side of the current step (and of the step just accounted, for late complaints)."""

    def __init__(self, deadlines: Deadlines, secret: bytes, *, enabled: bool, roots: int, fanout: int,
                 nbytes: int) -> None:
        self._deadlines, self._secret = deadlines, secret
        self.enabled, self._roots, self._fanout, self._nbytes = enabled, roots, fanout, nbytes
        self.book = RelayBook()
        self.step = -1
        self.sources: dict[int, Source | None] = {}
        self.complaints: list[list[Any]] = []
        self._done: set[int] = set()
        self._started = 0.0
        self._complained_at: dict[int, float] = {}
        self._previous: tuple[int, list[list[Any]], set[int], dict[int, Source | None]] | None = None
        self._unprotected_until: dict[int, int] = {}  # worker -> first step it is protected again
        self._abuses: dict[int, int] = {}

    def plan(self, step: int, links: list[AgentLink],
             uplink_rates: dict[int, float] | None = None) -> dict[int, Source | None]:
        """The step's tree (``--relay on`` and more agent processes than roots), else everyone direct. Workers whose
        measured uplink (``uplink_rates``, bytes/s of their payloads) is far below the typical relay to nobody
        (:func:`~shield_ps.phases.relay.slow_uplinks`)."""
        if self.step >= 0:
            self._previous = (self.step, self.complaints, self._done, self.sources)
        self.step, self.complaints, self._done, self._complained_at = step, [], set(), {}
        self._started = time.monotonic()
        if not self.enabled:
            self.sources = {}
            return self.sources
        nodes = [RelayNode(link.worker, link.relay) for link in links]
        slow = slow_uplinks(uplink_rates) if uplink_rates else frozenset()
        self.sources = plan_tree(nodes, step, self._secret, roots=self._roots, fanout=self._fanout,
                                 no_relay=self.book.no_relay(step) | slow, direct=self.book.direct(step))
        return self.sources

    def on_complaint(self, link: AgentLink, header: dict[str, Any], send_direct: Callable[[AgentLink, int], Any],
                     changed: Callable[[], None]) -> None:
        """A RELAY from ``link``: its relay failed it in the step the header names (a malformed one is ignored)."""
        try:
            complaint = parse_relay_complaint(header)
        except MessageError as exc:
            log.debug("ignoring RELAY from worker %d: %s", link.worker, exc)
            return
        step, reason = complaint.step, complaint.reason
        if step == self.step:
            source = self.sources.get(link.worker)
            if source is None or link.worker in self._done:
                return
            self._done.add(link.worker)
            self._complained_at[link.worker] = time.monotonic()
            log.warning("step %d: worker %d got no valid parameters from worker %d's relay (%s): sending them "
                        "directly", step, link.worker, source.worker, reason)
            self.complaints.append([link.worker, source.worker, reason])
            send_direct(link, step)
            changed()
        elif self._previous is not None and step == self._previous[0]:
            self._late(link, step, reason)

    def _late(self, link: AgentLink, step: int, reason: str) -> None:
        _, complaints, done, sources = self._previous  # type: ignore[misc]
        source = sources.get(link.worker)
        if source is None or link.worker in done:
            return
        done.add(link.worker)
        complaints.append([link.worker, source.worker, reason])
        if (link.worker, source.worker) in blame(complaints):
            self.book.complain(step, link.worker, source.worker)
        log.warning("step %d (late): worker %d's relay, worker %d, failed it (%s)", step, link.worker, source.worker,
                    reason)

    def blame(self) -> set[int]:
        """The current step's failed relays (:func:`~shield_ps.phases.relay.blame`); they and their accusers go on
        the relay cooldowns."""
        pairs = blame(self.complaints)
        for accuser, accused in pairs:
            self.book.complain(self.step, accuser, accused)
        return {accused for _, accused in pairs}

    def complained(self, worker: int) -> bool:
        """Whether ``worker`` complained of its relay this step (its lateness is its relay's fault)."""
        return worker in self._complained_at

    def protected_until(self, worker: int, allowance: float) -> float | None:
        """The monotonic time before which ``worker`` may not be erased as late: the end of its relay wait, or, after
        its complaint, one relay hop (the PS sends it the parameters directly) plus ``allowance`` (the gather's
        typical digest time and grace: it computes its files then) (None: not relayed, or not protected this step).
        A grace alone after the complaint left an honest child of a stalling relay no time to compute: erased."""
        if worker in self._complained_at:
            return self._complained_at[worker] + self._deadlines.relay_hop(self._nbytes) + allowance
        source = self.sources.get(worker)
        if source is None or self.step < self._unprotected_until.get(worker, 0):
            return None
        return self._started + source.depth * self._deadlines.relay_hop(self._nbytes) + self._deadlines.hedge_floor

    def end_step(self, late: set[int]) -> None:
        """The step's late workers: one that was relayed and protected, and still late (it never complained, or it
        complained and then did not compute in the time its complaint bought it), loses its protection for
        ``COOLDOWN_STEPS * 2**(n-1)`` steps (n: such steps so far): a complaint then silence cannot hold every step."""
        for worker in late:
            source = self.sources.get(worker)
            if source is None or self.step < self._unprotected_until.get(worker, 0):
                continue
            n = self._abuses[worker] = self._abuses.get(worker, 0) + 1
            wait = min(MAX_COOLDOWN_STEPS, COOLDOWN_STEPS << min(n - 1, 16))
            self._unprotected_until[worker] = self.step + 1 + wait

    def fields(self, direct: int) -> dict[str, Any]:
        """The step event's ``relay_tree`` (empty without a tree)."""
        if not self.sources:
            return {}
        relayed = sum(1 for source in self.sources.values() if source is not None)
        depth = max((source.depth for source in self.sources.values() if source is not None), default=1)
        relays = sorted({source.worker for source in self.sources.values() if source is not None})
        return {"direct": direct, "relayed": relayed, "depth": depth, "relays": relays,
                "complaints": list(self.complaints)}
