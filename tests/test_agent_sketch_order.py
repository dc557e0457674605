"""An agent answers a FETCH while the sketches of an earlier SKETCH are still being computed: the PS asks for the
blame sketches of a step and then fetches its split files' payloads, which used to wait behind every one of those
sketches (issue #26: a split file's payloads cost a step ~0.15 s of sketching). One agent over real TCP, its sketch
computation held by an event until the test has the payload."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

import shield_agent.client as client_module
import wire
from shield_agent.client import AgentOptions
from shield_agent.slots import run_agent
from shield_model.synthetic import initial_parameters
from tests.test_synthetic_lazy import FILES, SEED, TOKEN, D, EagerSession, _fetch, _job, _step
from wire import Kind
from wire.sketch import SketchRequest


async def _sketch_then_fetch(release: threading.Event) -> dict[str, Any]:
    record: dict[str, Any] = {}
    params = initial_parameters(D, SEED)

    async def on_connection(conn: wire.Connection) -> None:
        await conn.request(Kind.JOB, _job(), timeout=20)
        await _step(conn, 0, params, good=True)
        await conn.send(Kind.SKETCH, SketchRequest(0, bytes(range(32)), tuple(FILES), 8, 64).header())
        try:
            record["payload"] = await _fetch(conn, 0, FILES[0])  # 20 s: the sketches are held until it returns
        except TimeoutError:
            record["payload"] = "timed out"
        finally:
            release.set()
        record["sketches"] = []
        while len(record["sketches"]) < len(FILES):
            msg = await conn.recv(timeout=30)
            if msg.kind is Kind.SKETCH:
                record["sketches"].append(msg.header["file"])
        await conn.send(Kind.LEAVE, {"reason": "completed"})

    server = await wire.serve("127.0.0.1", 0, on_connection, token=TOKEN)
    try:
        options = AgentOptions(host="127.0.0.1", port=server.port, token=TOKEN, data_dir="/nonexistent",
                               reconnect=False, synthetic=0.0)
        record["status"] = await asyncio.wait_for(run_agent(options, EagerSession), 120)
    finally:
        await server.close()
    return record


def test_a_fetch_is_answered_while_the_sketches_before_it_are_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    answers = client_module.sketch_answers

    def held(*args: Any) -> Any:
        release.wait(60)
        return answers(*args)

    monkeypatch.setattr(client_module, "sketch_answers", held)
    record = asyncio.run(_sketch_then_fetch(release))
    assert isinstance(record["payload"], tuple), record["payload"]
    payload, digest = record["payload"]
    assert digest == wire.vector_digest(payload) and np.isfinite(payload).all()
    assert sorted(record["sketches"]) == sorted(FILES)  # and every sketch still came, once released
    assert record["status"] == 0
