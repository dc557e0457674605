"""The step's timed phases: one enum for the step, the view, the plot and the benches.

Each member's value is the key its seconds are written under in a step event's ``times`` (docs/metrics.md). Two of
those keys are older than the phases they time and do not say what they are: ``"compute"`` is the digest gather (the
PS waits while the agents compute and digest their files) and ``"gather"`` is the payload fetch (and the sketch round)
after the vote. The members say what they are; the keys stay, so that metrics files, ``shield-ps view`` and plots of
earlier runs read as before.
"""
from __future__ import annotations

import enum


class Phase(enum.Enum):
    """A timed phase of the step, in the order the view and the plot show them; ``.value`` is its metrics key."""

    BROADCAST = "broadcast"
    DIGEST_GATHER = "compute"
    PAYLOAD_FETCH = "gather"
    VOTE = "vote"
    AGGREGATE = "aggregate"
    UPDATE = "update"


#: The metrics keys of the phases, in :class:`Phase`'s order.
PHASE_KEYS: tuple[str, ...] = tuple(phase.value for phase in Phase)
#: The key of the whole step's seconds in ``times`` (from the broadcast's start to the step's last settlement).
TOTAL = "total"
