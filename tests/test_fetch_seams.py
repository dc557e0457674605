"""The fetch phase's seams, each by a focused in-process test over real TCP on 127.0.0.1 (issue #26): the hedge
to the next holder when the first one is silent, the payload's digest check, and the pace rule that spares a
receiving holder the hedge only when *every* running attempt keeps pace.

The PS side is a real :class:`~shield_ps.phases.fetch.Fetcher` over authenticated wire connections; each holder is a
real client connection scripted to answer FETCH one way (honestly, never, or with a payload that is not the one its
digest names). Bounds are the configured deadlines: the silent holder's transfer budget is long (60 s), the hedge
delay short (its floor, 0.5 s), and a fetch that hedges must end well inside the budget; nothing is timed finely.
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np

import wire
from shield_ps.phases.buffers import StepBuffers
from shield_ps.phases.deadlines import Deadlines
from shield_ps.phases.fetch import Fetcher, FetchReport, _Attempt, holder_order
from shield_ps.pool import AgentLink
from wire import Kind

TOKEN = "fetch-seam-token-0123456789abcdef"
D = 4096
STEP, FILE = 3, 0
#: the silent holder's whole budget: latency + 16 KiB at 1 GB/s
LATENCY = 60.0
HEDGE_FLOOR = 0.5


def _deadlines() -> Deadlines:
    return Deadlines(gather=60.0, latency=LATENCY, min_bandwidth=1e9, hedge_factor=4.0, hedge_floor=HEDGE_FLOOR)


def _payload(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(D).astype(np.float32)


def _secret_asking_first(worker: int, holders: tuple[int, ...]) -> bytes:
    """A fetch-order secret under which ``worker`` is the first holder asked for FILE at STEP."""
    for n in range(1000):
        secret = n.to_bytes(4, "big") * 8
        if holder_order(secret, STEP, FILE, holders)[0] == worker:
            return secret
    raise AssertionError("no such secret")


async def _holder(port: int, answer: Callable[[wire.Connection, wire.Message], asyncio.Future | None],
                  stop: asyncio.Event) -> None:
    """A client that answers every FETCH with ``answer`` until ``stop``."""
    conn = await wire.connect("127.0.0.1", port, token=TOKEN)
    try:
        async def serve() -> None:
            async for msg in conn:
                if msg.kind is Kind.FETCH:
                    coro = answer(conn, msg)
                    if coro is not None:
                        await coro
                else:
                    msg.discard()

        server = asyncio.get_running_loop().create_task(serve())
        await stop.wait()
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
    finally:
        await conn.close()


def honest(payload: np.ndarray) -> Callable:
    def answer(conn: wire.Connection, msg: wire.Message):
        return conn.send_vector(Kind.VECTOR, {"step": STEP, "file": FILE}, payload, codec="none", reply_to=msg)
    return answer


def silent(conn: wire.Connection, msg: wire.Message) -> None:
    return None


@contextlib.asynccontextmanager
async def _holders(answers: list[Callable]) -> AsyncIterator[dict[int, AgentLink]]:
    """Holders 0..n-1 connected to a wire server standing for the PS; yields worker -> the PS's link to it."""
    links: dict[int, AgentLink] = {}
    joined = asyncio.Event()
    stop = asyncio.Event()

    async def on_connection(conn: wire.Connection) -> None:
        links[conn.peer.id] = AgentLink(conn.peer.id, conn, "holder", (FILE,))
        joined.set()
        await stop.wait()

    server = await wire.serve("127.0.0.1", 0, on_connection, token=TOKEN)
    clients = []
    try:
        for worker, answer in enumerate(answers):  # one at a time, so holder i gets peer id i
            joined.clear()
            clients.append(asyncio.get_running_loop().create_task(_holder(server.port, answer, stop)))
            await asyncio.wait_for(joined.wait(), 30)
            assert set(links) == set(range(worker + 1)), links
        yield links
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        await server.close()


async def _fetch(answers: list[Callable], first: int, digest: bytes) -> tuple[FetchReport, np.ndarray, list[str]]:
    """Fetch FILE at STEP (winning ``digest``) from holders scripted by ``answers``, ``first`` asked first; the
    report, the file's row and the protocol violations the fetcher reported. Bounded well inside the silent
    holder's transfer budget."""
    holders = tuple(range(len(answers)))
    violations: list[str] = []
    buffers = StepBuffers(1, D)
    rows = buffers.rows
    async with _holders(answers) as links:
        fetcher = Fetcher(buffers, _deadlines(), _secret_asking_first(first, holders), links.get,
                          lambda link, why: violations.append(f"{link.worker}: {why}"))
        fetcher.begin(STEP)
        fetcher.start(FILE, digest, lambda: holders)
        try:
            report = await asyncio.wait_for(fetcher.finish(), LATENCY / 2)
        finally:
            await fetcher.cancel()
    return report, rows[FILE].copy(), violations


def test_a_silent_first_holder_is_hedged_and_the_fetch_ends_long_before_its_deadline() -> None:
    """Holder 0 never answers, holder 1 answers at once. The hedge (after the 0.5 s floor) asks holder 1, whose
    payload wins; the silent one is slow. Without the hedge the fetch would wait out holder 0's 60 s budget: here it
    must end within half of it (asyncio.wait_for raises otherwise)."""
    payload = _payload(1)
    report, row, violations = asyncio.run(_fetch([silent, honest(payload)], 0, wire.vector_digest(payload)))
    assert report.fetched == {FILE} and report.hedges == 1 and report.attempts == 2, report
    assert row.tobytes() == payload.tobytes()
    assert report.slow == {0} and not report.lying and not violations


def test_a_payload_that_does_not_hash_to_the_winning_digest_proves_a_lie_and_the_next_holder_is_asked() -> None:
    """Holder 0 is asked first and answers with a payload of the right shape that is not the one the winning
    digest names: it is proven lying, its payload never reaches the file's row, and holder 1's does."""
    payload, forged = _payload(2), _payload(3)
    report, row, _ = asyncio.run(_fetch([honest(forged), honest(payload)], 0, wire.vector_digest(payload)))
    assert report.lying == {0}, report
    assert report.fetched == {FILE} and row.tobytes() == payload.tobytes()
    assert 1 not in report.lying and 1 not in report.slow


def test_an_honest_first_holder_is_taken_without_a_hedge() -> None:
    """The control: holder 0 answers at once, holder 1 is never needed."""
    payload = _payload(4)
    report, row, _ = asyncio.run(_fetch([honest(payload), silent], 0, wire.vector_digest(payload)))
    assert report.fetched == {FILE} and report.hedges == 0 and report.attempts == 1
    assert row.tobytes() == payload.tobytes() and not report.slow and not report.lying


def _receiving(received: int, receiving: bool = True) -> _Attempt:
    attempt = _Attempt(worker=0)
    attempt.receiving, attempt.received, attempt.receiving_since = receiving, received, 0.0
    return attempt


def test_pace_spares_the_hedge_only_when_every_running_attempt_keeps_pace() -> None:
    """Two attempts of one file run (a hedge was already sent): one keeps pace with the step's payloads, the other
    trickles, or has not started. The fetch is not keeping pace (the next holder must be asked) unless both do."""
    fetcher = Fetcher(StepBuffers(1, 8), _deadlines(), b"s" * 32, lambda worker: None,
                      lambda link, why: None)
    shared = [_receiving(40 << 20), _receiving(44 << 20), _receiving(36 << 20)]
    fetcher._receiving.update(shared)
    fast, trickle, idle = _receiving(42 << 20), _receiving(1 << 20), _receiving(0, receiving=False)
    fetcher._receiving.update({fast, trickle})
    assert fetcher._keeping_pace([fast])
    assert not fetcher._keeping_pace([fast, trickle])
    assert not fetcher._keeping_pace([trickle, fast])
    assert not fetcher._keeping_pace([fast, idle])
    assert fetcher._keeping_pace([fast, shared[1]])


def test_a_holder_a_hedge_overtook_is_asked_last_in_the_next_steps() -> None:
    """Holder 0 never answers and is first in the keyed order at two steps running. At the first it costs a hedge
    delay (and is slow); at the next, the fetcher asks holder 1 first and takes its payload without a hedge, so a
    withholding holder does not cost every step it would be asked first a hedge delay."""
    holders = (0, 1)
    secret = next(n.to_bytes(4, "big") * 8 for n in range(10_000)
                  if all(holder_order(n.to_bytes(4, "big") * 8, STEP + k, FILE, holders)[0] == 0 for k in (0, 1)))
    payload = _payload(5)

    async def main() -> list[FetchReport]:
        reports = []
        async with _holders([silent, honest(payload)]) as links:
            fetcher = Fetcher(StepBuffers(1, D), _deadlines(), secret, links.get, lambda link, why: None)
            try:
                for step in (STEP, STEP + 1):
                    fetcher.begin(step)
                    fetcher.start(FILE, wire.vector_digest(payload), lambda: holders)
                    reports.append(await asyncio.wait_for(fetcher.finish(), LATENCY / 2))
            finally:
                await fetcher.cancel()
        return reports

    first, second = asyncio.run(main())
    assert first.hedges == 1 and first.slow == {0}, first
    assert second.hedges == 0 and second.attempts == 1 and not second.slow, second
