"""The PS's wait for its agents, over real authenticated TCP connections on 127.0.0.1: it reports ready / loading /
missing as ``join`` events, lets a connected agent that is still loading extend the deadline up to the cap, and says
what happened when nobody became ready."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import wire
from shield_ps.pool import WorkerPool

TOKEN = "join-progress-token-0123456789abcdef"
FILES = ((0,), (1,), (2,), (3,))


async def _cluster(agents: int, ready: int, timeout: float, cap: float) -> tuple[int, float, list[dict], WorkerPool]:
    """K=4 slots; ``agents`` connect and ``ready`` of them become ready; wait for all four."""
    events: list[dict[str, Any]] = []
    pool = WorkerPool(FILES, lambda kind, **fields: events.append({"kind": kind, **fields}))
    bound = asyncio.Event()

    async def on_connection(conn: wire.Connection) -> None:
        link = pool.bind(conn)
        if sum(1 for _ in pool.connected()) <= ready:
            pool.set_ready(link)
        if len(pool.connected()) == agents:
            bound.set()
        await conn.wait_closed()

    server = await wire.serve("127.0.0.1", 0, on_connection, token=TOKEN, admit=pool.admit)
    conns = []
    try:
        for i in range(agents):
            conns.append(await wire.connect("127.0.0.1", server.port, token=TOKEN, name=f"a{i}"))
        if agents:
            await asyncio.wait_for(bound.wait(), 10)
        started = time.monotonic()
        result = await pool.wait_ready(len(FILES), timeout, cap=cap)
        waited = time.monotonic() - started
    finally:
        for conn in conns:
            await conn.close()
        await server.close()
    return result, waited, [e for e in events if e["kind"] == "join"], pool


def test_a_loading_agent_extends_the_wait_up_to_the_cap() -> None:
    ready, waited, joins, _ = asyncio.run(_cluster(agents=3, ready=1, timeout=0.2, cap=1.5))
    assert ready == 1
    assert joins[-1] | {"left_s": None} == {"kind": "join", "ready": 1, "loading": 2, "missing": 1, "left_s": None}
    assert joins[-1]["left_s"] > 1.0, "while agents load, the time left counts to the cap"
    assert waited >= 1.5 - 0.05, f"gave up after {waited:.2f}s although two agents were still loading"


def test_without_loading_agents_the_deadline_is_the_timeout_from_the_last_progress() -> None:
    ready, waited, joins, _ = asyncio.run(_cluster(agents=2, ready=2, timeout=0.2, cap=30))
    assert ready == 2
    assert (joins[-1]["ready"], joins[-1]["loading"], joins[-1]["missing"]) == (2, 0, 2)
    assert joins[-1]["left_s"] <= 0.2
    assert waited < 30, "nothing was loading: the cap must not apply"


def test_the_failure_says_who_connected_and_what_the_rest_were_doing() -> None:
    ready, _, joins, pool = asyncio.run(_cluster(agents=2, ready=0, timeout=0.1, cap=0.3))
    assert ready == 0
    message = pool.join_failure()
    assert "2 connected" in message and "0 became ready" in message
    assert "2 still loading" in message and "2 never connected" in message
    assert (joins[-1]["ready"], joins[-1]["loading"], joins[-1]["missing"]) == (0, 2, 2)


def test_all_ready_returns_at_once() -> None:
    ready, waited, joins, _ = asyncio.run(_cluster(agents=4, ready=4, timeout=60, cap=600))
    assert ready == 4 and waited < 60
    assert (joins[-1]["ready"], joins[-1]["loading"], joins[-1]["missing"]) == (4, 0, 0)
