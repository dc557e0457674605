"""The timing zoo: agents that compute honestly (so their digests agree and they are asked for payloads) and
misbehave in time or on the wire in one way (docs/liveness.md: every such agent is cut off at a deadline, reported in
a category, and the step goes on)."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import numpy as np

from shield_agent.adversary.base import Behaviour
from shield_agent.adversary.params import Param, real, whole
from wire import Codec, Kind, MessageError, encode_frame, encode_vector
from wire.messages import DigestReport, VectorReply, parse_fetch_request, parse_step_order

if TYPE_CHECKING:
    from shield_agent.client import AgentSession
    from wire import Message


def _fetch_target(session: AgentSession, msg: Message) -> tuple[Any, int, int] | None:
    """(the session's current step work, step, file) when ``msg`` asks for a file computed here, else None."""
    try:
        request = parse_fetch_request(msg.header)
    except MessageError:
        return None
    work = session.work
    if work is None or work.step != request.step or request.file not in work.done:
        return None
    return work, request.step, request.file


class Trickle(Behaviour):
    """Answers FETCH with a proper VECTOR header, then trickles the payload one byte every SECONDS.

    Expected of the PS: the attempt is cut at its transfer deadline (its connection closed: the stream cannot
    resynchronise); a hedge to the next holder wins first; the trickler is ``slow``."""

    name = "trickle"
    params = (Param("seconds", real(0.001, 60.0), 0.5, "seconds in [0.001, 60]", "pause between bytes"),)

    async def on_fetch(self, session: AgentSession, msg: Message) -> None:
        target = _fetch_target(session, msg)
        if target is None:
            return
        work, step, file = target
        async with session.payload(work, file) as payload:
            if payload is None:
                return
            encoded = encode_vector(payload.copy(), Codec.NONE)
        head = encode_frame(Kind.VECTOR, VectorReply(step, file).header(), reply_to=msg.id, vector=encoded.desc)
        session.spawn(self._trickle(session.conn, head, bytes(encoded.chunks[0])))

    async def _trickle(self, conn: Any, head: bytes, payload: bytes) -> None:
        async with conn._send_lock:  # own the stream: this frame never ends in time
            conn._write(head)
            for i in range(len(payload)):
                if conn.closed:
                    return
                conn._write(payload[i:i + 1])
                await asyncio.sleep(self.args["seconds"])


class SlowPayload(Trickle):
    """An honest but slow link: the payload arrives in eight pieces, SECONDS apart (~1.2 s in all by default), past
    the hedge delay but within the transfer deadline even for three files queued on its one connection.

    Expected of the PS: another holder wins; this one is ``slow`` but not cut: its payload drains and its connection
    survives the run."""

    name = "slow-payload"
    params = (Param("seconds", real(0.001, 60.0), 0.15, "seconds in [0.001, 60]", "pause between pieces"),)

    async def _trickle(self, conn: Any, head: bytes, payload: bytes) -> None:
        async with conn._send_lock:
            conn._write(head)
            piece = -(-len(payload) // 8)
            for i in range(0, len(payload), piece):
                await asyncio.sleep(self.args["seconds"])
                if conn.closed:
                    return
                conn._write(payload[i:i + piece])


class SilentFetch(Behaviour):
    """Never answers FETCH.

    Expected of the PS: hedged after the hedge delay, the attempt cut at its transfer deadline; ``slow``."""

    name = "silent-fetch"

    async def on_fetch(self, session: AgentSession, msg: Message) -> None:
        return


class DelayedFetch(Behaviour):
    """Answers FETCH correctly, but only after SECONDS.

    Expected of the PS: as for ``silent-fetch``; the late reply is dropped."""

    name = "delayed-fetch"
    params = (Param("seconds", real(0.0, 3600.0), 60.0, "seconds in [0, 3600]", "delay before answering"),)

    async def on_fetch(self, session: AgentSession, msg: Message) -> None:
        async def later() -> None:
            await asyncio.sleep(self.args["seconds"])
            await session.answer_fetch(msg)

        session.spawn(later())


class SlowStepReader(Behaviour):
    """Stops reading its connection for SECONDS at each STEP (the broadcast backs up).

    Expected of the PS: the broadcast to it is bounded by its transfer deadline; it is ``slow`` (erased for the
    step) and the other agents' steps go on."""

    name = "slow-step-reader"
    params = (Param("seconds", real(0.0, 86400.0), 3600.0, "seconds in [0, 86400]", "how long it stops reading"),)

    async def on_step(self, session: AgentSession, msg: Message) -> None:
        await asyncio.sleep(self.args["seconds"])


class SilentDigests(Behaviour):
    """Stays connected and takes every STEP, but never sends a digest.

    Expected of the PS: once every file has its winner the gather ends after the short digest grace, and in the 8
    steps after one it missed, once it alone is missing, after ``--digest-grace-floor`` (0.05 s); ``slow`` and
    ``erased``. In a two-class fleet, where a file whose two other holders disagree has no winner without it, the file
    is voted on those two digests (the sketch vote) after a straggler grace the first time and the short grace for
    the next 8 steps, never the gather deadline."""

    name = "silent-digests"

    async def on_step(self, session: AgentSession, msg: Message) -> None:
        msg.discard()


class DelayedDigests(Behaviour):
    """Computes honestly but holds each digest SECONDS before sending it (its files are computed one after another,
    so its last digest comes about files x SECONDS late): in a two-class fleet, a file whose two other holders are
    of different classes has no winner until its digest comes.

    Expected of the PS: such a file waits a straggler grace for it (an honest straggler keeps the run a function of
    its seed); a worker that held the step past the short digest grace is ``slow``, and for the next 8 steps it is
    given only that grace (``erased`` when it misses it), so it costs about one straggler grace in nine steps; a
    file that has its winner never waits for it. On the relay tree, its relay protection does not cover its delay:
    a relayed worker that never complained and delivered after the grace is treated the same way."""

    name = "delayed-digests"
    params = (Param("seconds", real(0.0, 3600.0), 0.15, "seconds in [0, 3600]", "delay before each digest"),)

    def digest_delay(self, step: int, file: int) -> float:
        return float(self.args["seconds"])


class ReconnectEveryStep(Behaviour):
    """Disconnects as soon as a step starts (and the agent reconnects).

    Expected of the PS: ``erased`` for the step; it takes its slot back at the next step."""

    name = "reconnect-every-step"

    async def on_step(self, session: AgentSession, msg: Message) -> None:
        msg.discard()
        await session.conn.close("adversary: reconnecting every step")


class Flood(Behaviour):
    """On every STEP, sends COUNT digests for files it does not hold, each followed by a HEARTBEAT.

    Expected of the PS: a protocol violation: dropped (``lying``) at the first digest for a file not its own."""

    name = "flood"
    params = (Param("count", whole(1, 1_000_000), 2000, "an integer in 1..1000000", "digests per step"),)

    async def on_step(self, session: AgentSession, msg: Message) -> None:
        msg.discard()
        try:
            step = parse_step_order(msg.header).step
        except MessageError:
            return
        for i in range(self.args["count"]):
            try:  # well-formed digests, for files it was never given
                await session.conn.send(Kind.DIGESTS, DigestReport(step, 10_000 + i, b"\0" * 32, 0.0, 0.0).header())
                await session.conn.send(Kind.HEARTBEAT)
            except Exception:
                return


class WrongLength(Behaviour):
    """Answers FETCH with a VECTOR one element short.

    Expected of the PS: a protocol violation (a vector of the wrong shape): ``lying``, dropped; the next holder is
    asked."""

    name = "wrong-length"

    async def on_fetch(self, session: AgentSession, msg: Message) -> None:
        target = _fetch_target(session, msg)
        if target is None:
            return
        work, step, file = target
        async with session.payload(work, file) as payload:
            if payload is None:
                return
            short = np.ascontiguousarray(payload[:-1])
            await session.conn.send_vector(Kind.VECTOR, VectorReply(step, file).header(), short, codec=Codec.NONE,
                                           reply_to=msg)


class Replay(Behaviour):
    """Answers FETCH with the payload it computed for the same file at the previous step (honest at step 0).

    Expected of the PS: the payload does not hash to the digest: ``lying``; the next holder is asked."""

    name = "replay"

    def __init__(self, **args: Any) -> None:
        super().__init__(**args)
        self.previous: dict[int, np.ndarray] = {}

    async def on_step(self, session: AgentSession, msg: Message) -> None:
        work = session.work
        if work is not None:
            kept = {}
            for file in sorted(work.done):
                async with session.payload(work, file) as payload:
                    if payload is not None:
                        kept[file] = payload.copy()
            self.previous = kept
        await session.honest_step(msg)

    async def on_fetch(self, session: AgentSession, msg: Message) -> None:
        try:
            request = parse_fetch_request(msg.header)
        except MessageError:
            request = None
        old = None if request is None else self.previous.get(request.file)
        if request is None or old is None:
            await session.answer_fetch(msg)
            return
        await session.conn.send_vector(Kind.VECTOR, VectorReply(request.step, request.file).header(), old,
                                       codec=Codec.NONE, reply_to=msg)
