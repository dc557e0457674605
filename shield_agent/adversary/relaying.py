"""Byzantine relays (shield_agent.relay): a relay server that withholds or corrupts the parameters it forwards, and
a child that accuses its honest relay (docs/wire.md's relay broadcast; the PS's relay phase)."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np

from shield_agent.adversary.base import Behaviour
from shield_agent.adversary.params import Param, choice, whole
from wire import Codec, ConnectionClosed, Kind
from wire.messages import RelayComplaint, VectorReply

if TYPE_CHECKING:
    from shield_agent.client import AgentSession
    from shield_agent.relay import RelaySource
    from shield_agent.relay_store import RelayEntry, RelayStore
    from wire import Connection, Message

log = logging.getLogger(__name__)


class RelayStaller(Behaviour):
    """Computes honestly; its relay server accepts every request and never answers it (until the asker's wait ends).

    Expected of the PS: the staller's children complain (``stalled``) and get the vector directly; the staller is
    blamed in ``relay`` and demoted from the tree's inner nodes; an honest child waiting on it is not erased before
    its relay wait ends, and the complaint counts toward the step it concerns."""

    name = "relay-staller"

    async def relay_request(self, store: RelayStore, conn: Connection, msg: Message, step: int,
                            digest: bytes, wait: float) -> bool:
        await asyncio.sleep(wait)
        return True


class RelayCorrupter(Behaviour):
    """Computes honestly; its relay server waits for the whole vector, then sends it with one value changed.

    Expected of the PS: each child's digest check fails, it complains (``corrupt``) and gets the vector directly;
    nobody ever computes on wrong parameters; the corrupter is blamed in ``relay`` and demoted."""

    name = "relay-corrupter"

    async def relay_send(self, store: RelayStore, conn: Connection, msg: Message, entry: RelayEntry) -> None:
        await store.filled(entry, entry.buffer.nbytes)
        payload = entry.buffer.copy()
        payload[len(payload) // 2] += np.float32(1.0)
        await conn.send_vector(Kind.VECTOR, VectorReply(entry.step).header(), payload, codec=Codec.NONE, reply_to=msg)


class RelayAccuser(Behaviour):
    """Whenever the PS tells it to take a step's parameters from a relay, sends TIMES false RELAY complaints
    (reason REASON) against that (honest) relay at once, without asking it, then computes on the vector the PS sends
    it directly.

    Expected of the PS: the complaints of one step count once: the accused relay is demoted at most as for one
    complaint (cooldown 8 steps, doubling per step with a complaint, never per repeated message), the accuser is
    put on direct sends, and an accuser cannot bench honest relays faster than one strike per step."""

    name = "relay-accuser"
    params = (Param("times", whole(1, 1000), 5, "an integer in 1..1000", "complaints sent per step"),
              Param("reason", choice("stalled", "corrupt", "unreachable", "refused"), "stalled",
                    "stalled, corrupt, unreachable or refused", "the reason each complaint gives"))

    async def relayed_step(self, session: AgentSession, step: int, source: RelaySource, digest: bytes,
                           params: np.ndarray) -> None:
        log.info("step %d: accusing worker %d's relay %d times", step, source.worker, self.args["times"])
        for _ in range(self.args["times"]):
            try:
                await session.conn.send(Kind.RELAY, RelayComplaint(step, self.args["reason"]).header())
            except ConnectionClosed:
                return

