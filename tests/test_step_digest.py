"""STEP carries the BLAKE3 digest of the parameters and agents check it before computing (issue 16, the basis of a
relayed broadcast): a real agent (synthetic compute, in this process) against a hand-driven PS on 127.0.0.1."""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

import wire
from shield_agent.client import AgentOptions
from shield_agent.slots import run_agent
from shield_model.synthetic import initial_parameters
from wire import Kind

TOKEN = "s" * 32
D = 50_000


def _job() -> dict[str, Any]:
    return {"worker": 0, "files": [0, 1], "network": "LeNet", "dataset": "MNIST", "seed": 0, "batch_size": 2,
            "num_files": 2, "threads": 1, "codec": "auto", "codec_level": 1, "synthetic_d": D}


async def _scenario() -> list[int]:
    """Step 0 with a wrong digest, step 1 with the right one, step 2 without one (an older PS); returns the steps
    the agent sent digests for."""
    digested: list[int] = []
    done = asyncio.Event()
    params = initial_parameters(D, 0)

    async def on_connection(conn: wire.Connection) -> None:
        reply = await conn.request(Kind.JOB, _job(), timeout=20)
        assert reply.header["num_params"] == D
        good = wire.vector_digest(params)
        bad = bytes(32)
        for step, digest in ((0, bad), (1, good), (2, None)):
            header = {"step": step, "lr": 0.1, **({"params_digest": digest} if digest is not None else {})}
            await conn.send(Kind.STEP, header, vector=wire.encode_vector(params, "none"))
            deadline = asyncio.get_running_loop().time() + (3 if digest == bad else 15)
            while asyncio.get_running_loop().time() < deadline:
                try:
                    msg = await conn.recv(timeout=0.5)
                except wire.WireTimeoutError:
                    continue
                if msg.kind is Kind.DIGESTS:
                    digested.append(msg.header["step"])
                    if sum(1 for s in digested if s == step) == 2:
                        break
        await conn.send(Kind.LEAVE, {"reason": "completed"})
        done.set()

    server = await wire.serve("127.0.0.1", 0, on_connection, token=TOKEN)
    try:
        options = AgentOptions(host="127.0.0.1", port=server.port, token=TOKEN, data_dir="/nonexistent",
                               reconnect=False, synthetic=0.0)
        status = await asyncio.wait_for(run_agent(options), 30)
        await asyncio.wait_for(done.wait(), 5)
    finally:
        await server.close()
    assert status == 0
    return digested


def test_agent_computes_only_on_parameters_matching_the_step_digest() -> None:
    digested = asyncio.run(asyncio.wait_for(_scenario(), 60))
    assert 0 not in digested, "the agent computed on parameters whose digest did not match"
    assert digested.count(1) == 2 and digested.count(2) == 2, digested


def test_ps_broadcast_carries_the_digest_of_what_it_sends() -> None:
    """The Broadcaster's STEP header holds vector_digest of the snapshot it sends (checked on a live link)."""
    from shield_ps.config import ServeConfig
    from shield_ps.phases.broadcast import Broadcaster
    from shield_ps.phases.deadlines import Deadlines

    params = np.arange(D, dtype=np.float32)
    seen: list[tuple[bytes, bytes]] = []

    async def main() -> None:
        async def on_connection(conn: wire.Connection) -> None:  # the PS side broadcasts
            class Link:
                worker = 0

            link = Link()
            link.conn = conn  # type: ignore[attr-defined]
            broadcaster = Broadcaster(D, Deadlines.from_config(ServeConfig()), "auto", 1, lambda _l: None,
                                      lambda _w, _r: None)
            await broadcaster.start(0, 0.1, params, [link])  # type: ignore[list-item]
            await broadcaster.close()
            await conn.recv(timeout=10)  # until the agent leaves

        server = await wire.serve("127.0.0.1", 0, on_connection, token=TOKEN)
        try:
            conn = await wire.connect("127.0.0.1", server.port, token=TOKEN, role="agent")
            msg = await conn.recv(timeout=10)
            dest = np.empty(D, np.float32)
            seen.append((msg.header["params_digest"], await msg.read_vector_into(dest)))
            await conn.close()
        finally:
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    (announced, received), = seen
    assert announced == received == wire.vector_digest(params)


def test_an_agent_whose_step_is_cut_mid_vector_reconnects() -> None:
    """The PS cuts a STEP at its deadline (a slow link: the fleet bed's lossy WAN did it to every agent) and closes
    the connection under the agent's read: the agent joins again instead of exiting, and serves the next step."""
    big = 1_500_000  # two 4 MiB chunks: the cut falls between them
    params = initial_parameters(big, 0)
    connections: list[int] = []
    digested: list[int] = []

    async def on_connection(conn: wire.Connection) -> None:
        connections.append(len(connections))
        await conn.request(Kind.JOB, {**_job(), "synthetic_d": big}, timeout=20)
        header = {"step": 0, "lr": 0.1, "params_digest": wire.vector_digest(params)}
        if len(connections) == 1:
            async def cut(end: int) -> None:
                if end > 4 << 20:
                    raise RuntimeError("the STEP's deadline passed")

            try:
                await conn.send_vector_as_filled(Kind.STEP, header, params, cut)
            except Exception:  # noqa: BLE001 - the cut is the point
                pass
            await conn.close("took too long to receive STEP 0", code="timeout")
            return
        await conn.send(Kind.STEP, header, vector=wire.encode_vector(params, "none"))
        while len(digested) < 2:
            msg = await conn.recv(timeout=20)
            if msg.kind is Kind.DIGESTS:
                digested.append(msg.header["step"])
        await conn.send(Kind.LEAVE, {"reason": "completed"})

    async def main() -> int:
        server = await wire.serve("127.0.0.1", 0, on_connection, token=TOKEN)
        try:
            options = AgentOptions(host="127.0.0.1", port=server.port, token=TOKEN, data_dir="/nonexistent",
                                   reconnect=True, synthetic=0.0, relay=False)
            return await asyncio.wait_for(run_agent(options), 60)
        finally:
            await server.close()

    assert asyncio.run(main()) == 0
    assert len(connections) == 2 and digested == [0, 0]
