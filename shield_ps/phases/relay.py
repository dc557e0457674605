"""Relay broadcast, the PS's side: who takes the step's parameters from whom, and who failed to relay them.

Sending the parameters to every agent costs the PS K*d*4 bytes per step (1.56 GB at K = 35 and ResNet-18's d). With
the relay on, the PS sends the vector to ``roots`` agent processes only, and every other process takes it from a
parent in a tree of fan-out ``fanout`` (worker slots of one process share one copy: the process is the tree's node).
STEP carries the vector's BLAKE3 digest, every agent checks it before computing or forwarding, and an agent that has
nothing valid when its wait ends tells the PS (``RELAY``), which sends it the vector directly. PS egress is then
``roots * d * 4`` plus one vector per fallback. docs/performance.md measures it.

A complaint cannot be verified (the PS did not see the bytes between two agents), so it costs the accused only its
place as a relay: it is recorded (category ``relay``) and kept out of the tree's inner nodes for a cooldown that
doubles with each complaint, and the accuser takes its vectors from the PS for a cooldown too. A Byzantine accuser
can thus demote honest relays, which raises egress towards the direct broadcast's, never the result: the parameters
are checked by digest at every hop. The tree is reshuffled every step by a keyed hash, so a Byzantine relay cannot
choose whom it serves.
"""
from __future__ import annotations

import hashlib
import logging
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from wire.messages import RELAY_REASONS

log = logging.getLogger(__name__)

#: Steps a first complaint keeps the accused out of the inner nodes (and the accuser on direct sends).
COOLDOWN_STEPS = 8
#: The longest cooldown, steps.
MAX_COOLDOWN_STEPS = 1024
#: What an agent may say in RELAY (the protocol's :data:`wire.messages.RELAY_REASONS`).
REASONS = frozenset(RELAY_REASONS)


@dataclass(frozen=True)
class RelayNode:
    """One worker slot as the planner sees it: its id, and where its process serves relays (host, port, the process's
    id; None: it does not)."""

    worker: int
    serves: tuple[str, int, bytes] | tuple[str, int] | None


@dataclass(frozen=True)
class Source:
    """Where a worker takes the step's parameters: ``worker``'s process at ``address``, ``depth`` hops from the PS
    (a root's children are at depth 2)."""

    worker: int
    address: tuple[str, int]
    depth: int


def _rank(secret: bytes, step: int, worker: int) -> bytes:
    return hashlib.blake2b(step.to_bytes(8, "big") + worker.to_bytes(8, "big"), key=secret[:64],
                           digest_size=16).digest()


def plan_tree(nodes: Iterable[RelayNode], step: int, secret: bytes, *, roots: int, fanout: int,
              no_relay: frozenset[int] = frozenset(), direct: frozenset[int] = frozenset()) -> dict[int, Source | None]:
    """The step's relay tree: worker -> its :class:`Source`, or None when the PS sends to it directly.

    Slots of one process (same relay address) form one node, represented by its smallest worker id; its other slots
    take the vector from it inside the process. Nodes whose process serves and none of whose workers is in
    ``no_relay`` may be inner nodes; they come first, in an order keyed by ``secret`` and ``step``, then the others.
    Position p < ``roots`` is a root; position p >= ``roots`` hangs under inner node ``(p - roots) // fanout`` (a
    ``fanout``-ary heap); a node with no inner node left for it is a root too. Workers in ``direct`` always get the
    vector from the PS.
    """
    groups: dict[tuple[str, int] | tuple[str, int, bytes] | int, list[int]] = {}
    for node in nodes:  # a slot that serves no relay is a group of its own, keyed by its worker id
        groups.setdefault(node.serves if node.serves is not None else node.worker, []).append(node.worker)
    members = {min(workers): sorted(workers) for workers in groups.values()}
    serves = {min(workers): key for key, workers in groups.items() if isinstance(key, tuple)}
    inner = [w for w in members if w in serves and not set(members[w]) & no_relay]
    rest = [w for w in members if w not in inner]
    order = sorted(inner, key=lambda w: _rank(secret, step, w)) + sorted(rest, key=lambda w: _rank(secret, step, w))
    plan: dict[int, Source | None] = {}
    depth: dict[int, int] = {}
    for position, rep in enumerate(order):
        parent_index = (position - roots) // fanout if position >= roots else -1
        if 0 <= parent_index < len(inner) and rep not in direct:  # parents come first: parent_index < position
            parent = order[parent_index]
            plan[rep] = Source(parent, _host_port(serves[parent]), depth[parent] + 1)
            depth[rep] = depth[parent] + 1
        else:
            plan[rep] = None
            depth[rep] = 1
        for sibling in members[rep][1:]:  # only a serving process has siblings
            plan[sibling] = Source(rep, _host_port(serves[rep]), depth[rep] + 1)
    for worker in direct:
        if worker in plan:
            plan[worker] = None
    return plan


def blame(complaints: Iterable[tuple[int, int, str] | list[Any]]) -> list[tuple[int, int]]:
    """The (accuser, accused) pairs of a step's complaints ``[accuser, accused, reason]`` that count: a relay forwards
    each chunk before its own digest check, so when its source fails it, it cuts its children off and they complain
    about it; an accused that complained itself in the step is excused."""
    complaints = [tuple(c) for c in complaints]
    accusers = {c[0] for c in complaints}
    return [(c[0], c[1]) for c in complaints if c[1] not in accusers]


#: A worker whose payloads reach the PS at less than this share of the median worker's rate relays to nobody.
SLOW_UPLINK_SHARE = 0.25


def slow_uplinks(rates: dict[int, float], share: float = SLOW_UPLINK_SHARE) -> frozenset[int]:
    """The workers whose last verified payload reached the PS at less than ``share`` of the median worker's rate
    (bytes/s, measured by the fetches): a relay forwards the whole vector over its uplink to ``fanout`` children,
    cut-through, so one slow uplink among the inner nodes slows its whole subtree, and no complaint ever says so (the
    vector arrives within the hop's wait). The fleet bed showed it; such workers still receive from relays. An agent
    can only slow itself this way, which costs it nothing but its place as a relay."""
    if len(rates) < 3:
        return frozenset()
    typical = statistics.median(rates.values())
    return frozenset(w for w, rate in rates.items() if rate < share * typical)


def _host_port(serves: tuple) -> tuple[str, int]:
    return serves[0], serves[1]


@dataclass
class RelayBook:
    """Complaints and cooldowns over the run (operational state: not checkpointed, a restart forgets them)."""

    demoted_until: dict[int, int] = field(default_factory=dict)  # accused -> first step it may relay again
    direct_until: dict[int, int] = field(default_factory=dict)  # accuser -> first step it is relayed to again
    strikes: dict[int, int] = field(default_factory=dict)  # complaints involving the worker, either side

    def no_relay(self, step: int) -> frozenset[int]:
        return frozenset(w for w, until in self.demoted_until.items() if step < until)

    def direct(self, step: int) -> frozenset[int]:
        return frozenset(w for w, until in self.direct_until.items() if step < until)

    def complain(self, step: int, accuser: int, accused: int) -> None:
        """``accuser`` got nothing valid from ``accused``'s process at ``step``."""
        for worker, book in ((accused, self.demoted_until), (accuser, self.direct_until)):
            strikes = self.strikes[worker] = self.strikes.get(worker, 0) + 1
            book[worker] = step + 1 + min(MAX_COOLDOWN_STEPS, COOLDOWN_STEPS << min(strikes - 1, 16))
