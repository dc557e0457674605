"""A zoo of Byzantine agents for the liveness tests, built on the project's own agent session and wire code.

Each behaviour is an :class:`~shield_agent.client.AgentSession` subclass that computes honestly (so its digests agree
with the other holders and it would be asked for payloads) and misbehaves in time or on the wire in one way.
:func:`run_cluster` runs a PS daemon with honest agents and at most one zoo agent in this process, over real TCP on
127.0.0.1, and returns the run's events and final parameters.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shield_agent.client import AgentOptions, AgentSession
from shield_agent.slots import run_agent
from shield_ps.checkpoint import load_latest
from shield_ps.config import ServeConfig
from shield_ps.daemon import PSDaemon
from shield_ps.events import EventSink, read_events
from shield_ps.phases.fetch import holder_order
from tests.runtime_helpers import MNIST_DIR
from wire import Codec, Kind, Message, encode_frame, encode_vector

TOKEN = "zoo-test-token-0123456789abcdef"


class TrickleSession(AgentSession):
    """Answers FETCH with a proper VECTOR header, then trickles the payload one byte every 0.5 s."""

    async def _on_fetch(self, msg: Message) -> None:
        if self.job is None or self._work is None:
            return
        file = msg.header.get("file")
        if file not in self._grads:
            return
        encoded = encode_vector(self._grads[file], Codec.NONE)
        head = encode_frame(Kind.VECTOR, {"step": msg.header.get("step"), "file": file}, reply_to=msg.id,
                            vector=encoded.desc)
        asyncio.get_running_loop().create_task(self._trickle(head, bytes(encoded.chunks[0])))

    async def _trickle(self, head: bytes, payload: bytes) -> None:
        async with self.conn._send_lock:  # own the stream: this frame never ends in time
            self.conn._write(head)
            for i in range(len(payload)):
                if self.conn.closed:
                    return
                self.conn._write(payload[i:i + 1])
                await asyncio.sleep(0.5)


class SlowPayloadSession(TrickleSession):
    """An honest but slow link: the payload arrives in eight pieces over ~1.2 s, past the hedge delay, so another
    holder wins, but within its deadline even when it is asked for all three of its files in one step (they queue on
    its one connection); its connection must survive (it is not cut, only outpaced)."""

    async def _trickle(self, head: bytes, payload: bytes) -> None:
        async with self.conn._send_lock:
            self.conn._write(head)
            piece = -(-len(payload) // 8)
            for i in range(0, len(payload), piece):
                await asyncio.sleep(0.15)
                if self.conn.closed:
                    return
                self.conn._write(payload[i:i + piece])


class SilentFetchSession(AgentSession):
    """Never answers FETCH."""

    async def _on_fetch(self, msg: Message) -> None:
        return


class DelayedFetchSession(AgentSession):
    """Answers FETCH correctly, but only after a long delay."""

    delay = 60.0

    async def _on_fetch(self, msg: Message) -> None:
        async def later() -> None:
            await asyncio.sleep(self.delay)
            with contextlib.suppress(Exception):
                await AgentSession._on_fetch(self, msg)

        asyncio.get_running_loop().create_task(later())


class SlowStepReaderSession(AgentSession):
    """Takes the STEP broadcast's parameters very slowly: it stops reading its connection for a long time."""

    async def _on_step(self, msg: Message) -> None:
        await asyncio.sleep(3600)


class SilentDigestsSession(AgentSession):
    """Stays connected and takes every STEP, but never sends a digest."""

    async def _on_step(self, msg: Message) -> None:
        msg.discard()


class ReconnectEverySession(AgentSession):
    """Disconnects as soon as a step starts (and the agent loop reconnects)."""

    async def _on_step(self, msg: Message) -> None:
        msg.discard()
        await self.conn.close("zoo: reconnecting every step")


class FloodSession(AgentSession):
    """On every step, floods the PS with DIGESTS for files it does not hold and unsolicited frames."""

    async def _on_step(self, msg: Message) -> None:
        msg.discard()
        step = msg.header.get("step")
        for i in range(2000):
            try:
                await self.conn.send(Kind.DIGESTS, {"step": step, "file": 10_000 + i, "digest": b"\0" * 32,
                                                    "loss": 0.0, "seconds": 0.0})
                await self.conn.send(Kind.HEARTBEAT)
            except Exception:
                return


class WrongLengthSession(AgentSession):
    """Answers FETCH with a VECTOR one element short."""

    async def _on_fetch(self, msg: Message) -> None:
        file = msg.header.get("file")
        if file not in self._grads:
            return
        short = np.ascontiguousarray(self._grads[file][:-1])
        await self.conn.send_vector(Kind.VECTOR, {"step": msg.header.get("step"), "file": file}, short,
                                    codec=Codec.NONE, reply_to=msg)


class ReplaySession(AgentSession):
    """Answers FETCH with the payload it computed for the same file at the previous step (honest at step 0)."""

    previous: dict[int, np.ndarray]

    async def _on_step(self, msg: Message) -> None:
        if not hasattr(self, "previous"):
            self.previous = {}
        if self._work is not None:
            self.previous = {f: g.copy() for f, g in self._grads.items() if f in self._work.done}
        await super()._on_step(msg)

    async def _on_fetch(self, msg: Message) -> None:
        file = msg.header.get("file")
        old = getattr(self, "previous", {}).get(file)
        if old is None:
            await super()._on_fetch(msg)
            return
        await self.conn.send_vector(Kind.VECTOR, {"step": msg.header.get("step"), "file": file}, old,
                                    codec=Codec.NONE, reply_to=msg)


#: behaviour -> (session type, AgentOptions changes)
ZOO: dict[str, tuple[type[AgentSession], dict[str, Any]]] = {
    "trickle": (TrickleSession, {}),
    "slow-payload": (SlowPayloadSession, {}),
    "silent-fetch": (SilentFetchSession, {}),
    "delayed-fetch": (DelayedFetchSession, {}),
    "slow-step-reader": (SlowStepReaderSession, {}),
    "reconnect-every-step": (ReconnectEverySession, {}),
    "silent-digests": (SilentDigestsSession, {}),
    "flood": (FloodSession, {}),
    "wrong-length": (WrongLengthSession, {}),
    "replay": (ReplaySession, {}),
    "liar-2x": (AgentSession, {"lie_factor": 2.0}),  # consistent liars: outvoted, never proven lying
    "liar-3x": (AgentSession, {"lie_factor": 3.0}),
    "nan": (AgentSession, {"lie_factor": float("nan")}),  # non-finite gradients, digested consistently
    "relay-corrupt": (AgentSession, {"relay_lie": "corrupt"}),  # computes honestly, relays a changed vector
    "relay-stall": (AgentSession, {"relay_lie": "stall"}),  # computes honestly, never answers a relay request
}


@dataclass
class RunResult:
    events: list[dict[str, Any]]
    params: np.ndarray
    exit_code: int

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


def zoo_config(train_dir: Path, **changes: Any) -> ServeConfig:
    """Ramanujan Case 2, K=9 r=3 m=3 (f=9, l=3 files per worker), LeNet on MNIST, tight but generous deadlines."""
    base = ServeConfig(scheme="rama_two", workers=9, replication=3, rama_m=3, network="LeNet", dataset="MNIST",
                       data_dir=str(MNIST_DIR), max_steps=4, eval_freq=1000, train_dir=str(train_dir), lr=0.02,
                       port=0, gather_timeout=20.0, upload_timeout=5.0, min_bandwidth=5.0, hedge_floor=1.0,
                       join_timeout=120.0)
    return dataclasses.replace(base, **changes)


def secret_favouring(config: ServeConfig, worker: int) -> bytes:
    """A fetch-order secret under which ``worker`` is asked first for at least one of its files at every step."""
    from shield_ps.byzantine.placement import build_placement

    placement = build_placement(config.scheme, config.workers, config.replication, config.rama_m)
    files = placement.worker_files[worker]
    for n in range(10_000):
        secret = n.to_bytes(8, "big") * 4
        if all(any(holder_order(secret, step, f, placement.file_workers[f])[0] == worker for f in files)
               for step in range(config.max_steps or 0)):
            return secret
    raise AssertionError("no such secret")


def secret_making_relay(config: ServeConfig, worker: int, steps: int = 1) -> bytes:
    """A secret under which ``worker`` (its own agent process) forwards the parameters to another worker in each of
    the first ``steps`` steps (the relay tree of shield_ps.phases.relay)."""
    from shield_ps.phases.relay import RelayNode, plan_tree

    nodes = [RelayNode(w, ("127.0.0.1", 10_000 + w)) for w in range(config.workers)]
    for n in range(10_000):
        secret = n.to_bytes(8, "big") * 4
        if all(any(source is not None and source.worker == worker
                   for source in plan_tree(nodes, step, secret, roots=config.relay_roots,
                                           fanout=config.relay_fanout).values())
               for step in range(steps)):
            return secret
    raise AssertionError("no such secret")


async def _run(config: ServeConfig, slots: list[str | None], secret: bytes | None,
               interrupt_after: int | None) -> int:
    sink = EventSink(Path(config.train_dir) / "metrics.jsonl")
    loop = asyncio.get_running_loop()
    listening: asyncio.Future[int] = loop.create_future()
    daemon = PSDaemon(config, TOKEN, sink, on_listening=lambda host, port: listening.set_result(port))
    daemon.fetch_secret = secret
    ps = loop.create_task(daemon.run())
    if interrupt_after is not None:  # what SIGINT/SIGTERM do to `shield-ps serve`: cancel the daemon's task
        sink.subscribe(lambda e: ps.cancel() if e["kind"] == "step" and e["step"] == interrupt_after else None)
    port = await asyncio.wait_for(asyncio.shield(listening), 300)
    agents = []
    try:
        for slot, behaviour in enumerate(slots):  # one at a time, so agent i takes slot i
            session, changes = ZOO[behaviour] if behaviour else (AgentSession, {})
            options = AgentOptions("127.0.0.1", port, TOKEN, str(MNIST_DIR), threads=1, name=behaviour or "honest",
                                   max_backoff=1.0, **changes)
            agents.append(loop.create_task(run_agent(options, session)))
            assert daemon.pool is not None
            while len(daemon.pool.ready_links()) <= slot and not ps.done():
                daemon.pool.changed.clear()
                await asyncio.wait_for(daemon.pool.changed.wait(), 300)
        try:
            return await asyncio.wait_for(asyncio.shield(ps), 600)
        except asyncio.CancelledError:
            if interrupt_after is None:
                raise
            return 130
    finally:
        ps.cancel()
        for task in agents:
            task.cancel()
        await asyncio.gather(ps, *agents, return_exceptions=True)
        sink.close()


def run_cluster(train_dir: Path, *, slots: list[str | None] | None = None, zoo: str | None = None,
                secret: bytes | None = None, interrupt_after: int | None = None, **changes: Any) -> RunResult:
    """Run a whole training job in this process. ``slots[i]`` is worker i's behaviour (None: honest); the default is
    K honest workers, with ``zoo`` as worker K-1 when given."""
    config = zoo_config(train_dir, **changes)
    if slots is None:
        slots = [None] * (config.workers - 1) + [zoo]
    code = asyncio.run(_run(config, slots, secret, interrupt_after))
    checkpoint = load_latest(train_dir / "checkpoints")
    assert checkpoint is not None, f"no checkpoint in {train_dir}"
    return RunResult(read_events(train_dir / "metrics.jsonl"), checkpoint.params, code)
