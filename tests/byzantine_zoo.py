"""Small in-process clusters for the liveness and Byzantine tests: a PS daemon and K agents in this process over real
TCP on 127.0.0.1, each agent honest or running behaviours of the adversary zoo (``shield_agent.adversary``, the
same code as ``shield-agent join --adversary``).

:func:`run_cluster` runs a whole job and returns the run's events, final parameters and the PS's state at the end.
"""
from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shield_agent.adversary import parse_adversaries
from shield_agent.client import AgentOptions, AgentSession
from shield_agent.slots import run_agent
from shield_ps.checkpoint import load_latest
from shield_ps.config import ServeConfig
from shield_ps.daemon import PSDaemon
from shield_ps.events import EventSink, read_events
from shield_ps.phases.fetch import holder_order
from tests.runtime_helpers import MNIST_DIR

TOKEN = "zoo-test-token-0123456789abcdef"


@dataclass(frozen=True)
class Agent:
    """One worker slot's agent: its ``--adversary`` values (none: honest), its session type (tests substitute the
    stored path of a synthetic job) and other AgentOptions."""

    adversary: tuple[str, ...] = ()
    session: type[AgentSession] = AgentSession
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "+".join(self.adversary) or "honest"


def as_agent(slot: str | Agent | None) -> Agent:
    """A slot's agent: None is honest, a string is whitespace-separated ``--adversary`` values."""
    if slot is None:
        return Agent()
    if isinstance(slot, str):
        return Agent(tuple(slot.split()))
    return slot


@dataclass
class RunResult:
    events: list[dict[str, Any]]
    params: np.ndarray
    exit_code: int
    daemon: Any = None  # the PSDaemon after the run (its runner's relay book, classes, ...)

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
    from byzantine.placement import build_placement

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


def secret_relaying_to(config: ServeConfig, worker: int) -> tuple[bytes, int]:
    """A secret under which ``worker`` (its own agent process) is told to take step 0's parameters from another
    worker's relay, and that relay."""
    from shield_ps.phases.relay import RelayNode, plan_tree

    nodes = [RelayNode(w, ("127.0.0.1", 10_000 + w)) for w in range(config.workers)]
    for n in range(10_000):
        secret = n.to_bytes(8, "big") * 4
        source = plan_tree(nodes, 0, secret, roots=config.relay_roots, fanout=config.relay_fanout)[worker]
        if source is not None:
            return secret, source.worker
    raise AssertionError("no such secret")


async def _run(config: ServeConfig, slots: list[Agent], secret: bytes | None,
               interrupt_after: int | None, kept: list[Any]) -> int:
    sink = EventSink(Path(config.train_dir) / "metrics.jsonl")
    loop = asyncio.get_running_loop()
    listening: asyncio.Future[int] = loop.create_future()
    daemon = PSDaemon(config, TOKEN, sink, on_listening=lambda host, port: listening.set_result(port))
    daemon.fetch_secret = secret
    kept.append(daemon)
    ps = loop.create_task(daemon.run())
    if interrupt_after is not None:  # what SIGINT/SIGTERM do to `shield-ps serve`: cancel the daemon's task
        sink.subscribe(lambda e: ps.cancel() if e["kind"] == "step" and e["step"] == interrupt_after else None)
    port = await asyncio.wait_for(asyncio.shield(listening), 300)
    agents = []
    try:
        refused = 0  # agents the PS refused for good: the next agent takes the slot they left
        for slot, agent in enumerate(slots):  # one at a time, so agent i takes slot i
            options = AgentOptions("127.0.0.1", port, TOKEN, str(MNIST_DIR), threads=1, name=agent.name[:64],
                                   max_backoff=1.0, adversary=parse_adversaries(agent.adversary), **agent.options)
            agents.append(loop.create_task(run_agent(options, agent.session)))
            assert daemon.pool is not None
            while len(daemon.pool.ready_links()) <= slot - refused and not ps.done() and not agents[-1].done():
                daemon.pool.changed.clear()
                changed = loop.create_task(daemon.pool.changed.wait())
                try:  # the PS may also end (or fail) meanwhile: then its result is the answer, not a timeout; an
                    # agent the PS refused for good ends: its slot stays empty
                    done, _ = await asyncio.wait({changed, ps, agents[-1]}, timeout=300,
                                                 return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if not done:
                    raise TimeoutError(f"agent {slot} was not ready within 300 s")
            refused += agents[-1].done() and len(daemon.pool.ready_links()) <= slot - refused
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
        _, pending = await asyncio.wait({ps, *agents}, timeout=120)  # a task that ignores its cancel fails the run
        sink.close()
        if pending:
            raise AssertionError(f"{len(pending)} task(s) of the cluster ignored their cancellation")


def run_cluster(train_dir: Path, *, slots: list[str | Agent | None] | None = None, zoo: str | None = None,
                secret: bytes | None = None, interrupt_after: int | None = None, require_checkpoint: bool = True,
                **changes: Any) -> RunResult:
    """Run a whole training job in this process. ``slots[i]`` is worker i's agent (None: honest; a string: its
    ``--adversary`` values, e.g. ``"hider:0.04 fake-probe"``); the default is K honest workers, with ``zoo`` as worker
    K-1 when given. Without ``require_checkpoint``, a run that wrote none (it failed before its first step) has
    ``params`` None."""
    config = zoo_config(train_dir, **changes)
    if slots is None:
        slots = [None] * (config.workers - 1) + [zoo]
    kept: list[Any] = []
    code = asyncio.run(_run(config, [as_agent(s) for s in slots], secret, interrupt_after, kept))
    checkpoint = load_latest(train_dir / "checkpoints")
    assert checkpoint is not None or not require_checkpoint, f"no checkpoint in {train_dir}"
    params = checkpoint.params if checkpoint is not None else None
    return RunResult(read_events(train_dir / "metrics.jsonl"), params, code,  # type: ignore[arg-type]
                     kept[0] if kept else None)
