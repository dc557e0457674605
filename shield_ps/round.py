"""One training step on the PS, as a sequence of phases each bounded by its own deadline (Konstantinidis and
Ramamoorthy, MLSys 2021, Sec. 3; ../shared/ARCHITECTURE.md; docs/liveness.md for every deadline):

broadcast (:mod:`shield_ps.phases.broadcast`) -> gather digests, with each file fetched as soon as r' equal digests
are in (:mod:`shield_ps.collector`, :mod:`shield_ps.phases.fetch`) -> vote -> the remaining fetches -> attack
simulation and aggregation, or a skipped update (:mod:`shield_ps.phases.aggregate`) -> update.

No phase waits on a peer past its deadline: a worker that misses one is erased or cut off for the step and recorded
(:mod:`shield_ps.phases.accounting`), and the step goes on. Heavy work runs in executor threads.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from shield_ps.byzantine.sketch import DEFAULT_PARAMS
from shield_ps.byzantine.vote import VoteMode, VoteResult, vote_digests, vote_tolerant
from shield_ps.collector import DigestRejected, StepCollector
from shield_ps.errors import TrainingError
from shield_ps.events import WorkerState
from shield_ps.job import JobPlan
from shield_ps.optimizer import MomentumSGD
from shield_ps.phases.accounting import StepAccount
from shield_ps.phases.auto_vote import AutoVote
from shield_ps.phases.aggregate import Aggregation, AggregationOutcome, ShortStep
from shield_ps.phases.broadcast import Broadcaster
from shield_ps.phases.deadlines import Deadlines
from shield_ps.phases.fetch import Fetcher, FetchReport
from shield_ps.phases.relay import REASONS, RelayBook, RelayNode, Source, blame, plan_tree, slow_uplinks
from shield_ps.phases.sketch import SketchRound
from shield_ps.pool import AgentLink, WorkerPool

log = logging.getLogger(__name__)


@dataclass
class StepOutcome:
    """What one step did (the fields of the ``step`` event, docs/metrics.md)."""

    step: int
    lr: float
    loss: float | None
    files: int
    files_won: int
    files_dropped: int
    files_corrupted: int
    account: StepAccount
    aggregation: dict[str, Any]
    hedges: int
    sketch: dict[str, Any]
    bytes_in: int
    bytes_out: int
    times: dict[str, float] = field(default_factory=dict)
    codecs: dict[str, dict[str, int]] = field(default_factory=dict)  # direction -> codec -> vectors (--codec auto)
    relay_tree: dict[str, Any] = field(default_factory=dict)  # relay broadcast: direct sends, relayed, complaints

    def event_fields(self) -> dict[str, Any]:
        fields = {k: v for k, v in self.__dict__.items() if k != "account"}
        legacy = sorted(set(self.account.lying) | set(self.account.outvoted))  # `flagged`, kept for old scripts
        return {**fields, **self.account.fields(), "flagged": legacy}


class StepRunner:
    """Runs steps for one job over the agents in ``pool``; owns the phases and the preallocated buffers."""

    def __init__(self, plan: JobPlan, pool: WorkerPool, optimizer: MomentumSGD,
                 on_protocol_violation: Callable[[AgentLink, str], None], *, secret: bytes | None = None) -> None:
        cfg = plan.config
        self.plan, self.pool, self.optimizer = plan, pool, optimizer
        self._drop = on_protocol_violation
        f, d = plan.placement.f, optimizer.params.shape[0]
        self.d = d
        self._rows = np.empty((f, d), dtype=np.float32)
        self._replicas: dict[tuple[int, int], np.ndarray] = {}
        self.deadlines = Deadlines.from_config(cfg)
        self.broadcaster = Broadcaster(d, self.deadlines, cfg.codec, cfg.codec_level, self._on_sent, self._on_slow)
        self._secret = secret or secrets.token_bytes(32)
        self.fetcher = Fetcher(self._rows, self.deadlines, self._secret, pool.link, self._on_violation)
        self.aggregation = Aggregation(plan, self._rows, ShortStep(cfg.short_step))
        self.sketches = SketchRound(DEFAULT_PARAMS, f, d, self.deadlines.latency, pool.link, self._on_violation)
        self.auto = AutoVote(plan.placement, self.fetcher, self.sketches, self._rows, self._start_fetch)
        self.vote_mode = VoteMode(cfg.vote)
        self._votes = {VoteMode.EXACT: self._exact_vote, VoteMode.AUTO: self._auto_vote,
                       VoteMode.TOLERANT: self._tolerant_vote}
        self.collector: StepCollector | None = None
        self.completed_steps: int | None = None
        self._step_lying: set[int] = set()
        self._step_slow: set[int] = set()
        self.relay_book = RelayBook()
        self._sources: dict[int, Source | None] = {}
        self._complaints: list[list[Any]] = []
        self._relay_done: set[int] = set()
        self._update: tuple[int, asyncio.Future[None]] | None = None
        self._loop = asyncio.get_event_loop()

    # ---- callbacks from the connections -----------------------------------------------------------------------
    def on_digest(self, link: AgentLink, header: dict[str, Any]) -> None:
        """Called by the agent's connection task for every DIGESTS message."""
        collector = self.collector
        if collector is None:
            return
        try:
            recorded = collector.add(link.worker, header)
        except DigestRejected as exc:
            self._on_violation(link, str(exc))
            return
        if recorded and collector.worker_done(link.worker):
            self.pool.set_state(link, WorkerState.DONE, compute_s=collector.compute_s.get(link.worker))

    def set_tolerance(self, tol: float) -> None:
        """The sketch vote's relative tolerance (set from the determinism classes, shield_ps.classes)."""
        self.auto.tolerance = tol

    def on_sketch(self, link: AgentLink, header: dict[str, Any]) -> None:
        """Called by the agent's connection task for every SKETCH message (``--vote auto``)."""
        self.sketches.on_answer(link, header)

    def on_agent_lost(self, link: AgentLink) -> None:
        self.fetcher.uplink_rates.pop(link.worker, None)  # its slot's next agent is measured afresh
        if self.collector is not None:
            self.collector.drop_worker(link.worker)
        self.sketches.drop_worker(link.worker)

    def on_relay(self, link: AgentLink, header: dict[str, Any]) -> None:
        """Called for every RELAY message: ``link``'s relay failed in the current step; record its source's process
        and send it the vector directly (once per worker and step; anything else is ignored)."""
        step, reason = header.get("step"), header.get("reason")
        source = self._sources.get(link.worker)
        if (step != self.pool.step or not isinstance(reason, str) or reason not in REASONS or source is None
                or link.worker in self._relay_done):
            log.debug("ignoring RELAY from worker %d: %r", link.worker, header)
            return
        self._relay_done.add(link.worker)
        log.warning("step %d: worker %d got no valid parameters from worker %d's relay (%s): sending them directly",
                    step, link.worker, source.worker, reason)
        self._complaints.append([link.worker, source.worker, reason])
        self.broadcaster.send_direct(link, step)

    def _relay_blame(self, step: int) -> set[int]:
        """The step's failed relays (:func:`~shield_ps.phases.relay.blame`); they and their accusers go on the relay
        cooldowns."""
        pairs = blame(self._complaints)
        for accuser, accused in pairs:
            self.relay_book.complain(step, accuser, accused)
        return {accused for _, accused in pairs}

    def _relay_plan(self, step: int, links: list[AgentLink]) -> dict[int, Source | None]:
        """The step's relay tree (``--relay on`` and more agent processes than roots), else everyone direct."""
        cfg = self.plan.config
        if getattr(cfg, "relay", "off") != "on":
            return {}
        nodes = [RelayNode(link.worker, link.relay) for link in links]
        return plan_tree(nodes, step, self._secret, roots=cfg.relay_roots, fanout=cfg.relay_fanout,
                         no_relay=self.relay_book.no_relay(step) | slow_uplinks(self.fetcher.uplink_rates),
                         direct=self.relay_book.direct(step))

    def _on_violation(self, link: AgentLink, why: str) -> None:
        self._step_lying.add(link.worker)
        self._drop(link, why)

    def _on_sent(self, link: AgentLink) -> None:
        if self.collector is not None and not self.collector.worker_done(link.worker):
            self.pool.set_state(link, WorkerState.COMPUTING)

    def _on_slow(self, worker: int, reason: str) -> None:
        self._step_slow.add(worker)

    def _on_winner(self, file: int, digest: bytes, holders: tuple[int, ...]) -> None:
        """Streaming vote: ``digest`` has r' holders, so it has won ``file``: fetch it now (exact and auto votes)."""
        streaming = self.plan.config.streaming_vote and self.vote_mode is not VoteMode.TOLERANT
        if self.collector is not None and streaming:
            self._start_fetch(self.collector, file, digest)

    def _start_fetch(self, collector: StepCollector, file: int, digest: bytes) -> None:
        self.fetcher.start(file, digest, lambda: tuple(sorted(
            w for w, d in collector.replies[file].items() if d == digest)))

    # ---- the step ---------------------------------------------------------------------------------------------
    async def run(self, step: int) -> StepOutcome:
        plan = self.plan
        times: dict[str, float] = {}
        started = time.perf_counter()
        lr = plan.schedule.lr_at(step)
        links = await self._ready_links()
        bytes_before = self._traffic(links)
        self.pool.step = step
        self._step_lying, self._step_slow = set(), set()
        self.fetcher.begin(step)
        collector = StepCollector(step, plan.placement.f, {link.worker: link.files for link in links},
                                  r_prime=plan.placement.r_prime, on_winner=self._on_winner)
        self.collector = collector
        self._sources, self._complaints, self._relay_done = self._relay_plan(step, links), [], set()
        _, busy = await self.broadcaster.start(step, lr, self.optimizer.params, links, self._sources)
        for worker in busy:
            self._step_slow.add(worker)
            collector.drop_worker(worker)
        times["broadcast"] = time.perf_counter() - started

        mark = time.perf_counter()
        late = await self._gather(step, collector)
        times["compute"] = time.perf_counter() - mark

        self.auto.last = {}
        vote, won, report = await self._votes[self.vote_mode](collector, times)

        mark = time.perf_counter()
        byzantine = plan.byzantine.at(step) if plan.byzantine is not None else ()
        result = await self._loop.run_in_executor(None, self.aggregation.run, step, won, byzantine)
        times["aggregate"] = time.perf_counter() - mark
        mark = time.perf_counter()
        await self._apply(step, lr, result)
        times["update"] = time.perf_counter() - mark
        times["total"] = time.perf_counter() - started

        present = {w for replies in collector.replies for w in replies}
        account = StepAccount.build(
            lying=self._step_lying | report.lying, outvoted=set(vote.disagreeing) | (result.attack_outvoted & present),
            slow=self._step_slow | report.slow | late,
            erased=(set(range(plan.placement.K)) - {link.worker for link in links}) | collector.lost | late,
            relay=self._relay_blame(step))
        bytes_in, bytes_out = (now - before for now, before in zip(self._traffic(links), bytes_before))
        return StepOutcome(
            step=step, lr=lr, loss=self._honest_loss(collector, set(byzantine) | set(account.lying)
                                                     | set(account.outvoted)),
            files=plan.placement.f, files_won=len(won), files_dropped=plan.placement.f - len(won),
            files_corrupted=len(result.corrupted), account=account,
            aggregation={"action": result.action, "s": result.s, "reason": result.reason},
            hedges=report.hedges, sketch=dict(self.auto.last), bytes_in=bytes_in, bytes_out=bytes_out, times=times,
            codecs={"out": dict(self.broadcaster.codecs), "in": dict(report.codecs)},
            relay_tree=self._relay_fields())

    def _relay_fields(self) -> dict[str, Any]:
        if not self._sources:
            return {}
        relayed = sum(1 for source in self._sources.values() if source is not None)
        depth = max((source.depth for source in self._sources.values() if source is not None), default=1)
        relays = sorted({source.worker for source in self._sources.values() if source is not None})
        return {"direct": len(self.broadcaster.direct), "relayed": relayed, "depth": depth, "relays": relays,
                "complaints": list(self._complaints)}

    async def _ready_links(self) -> list[AgentLink]:
        links = self.pool.ready_links()
        if links:
            return links
        timeout = self.plan.config.join_timeout
        log.warning("no agent is connected: waiting up to %.0fs (--join-timeout) for one", timeout)
        if await self.pool.wait_ready(1, timeout) == 0:
            raise TrainingError(f"no agent was connected for --join-timeout {timeout:.0f}s")
        return self.pool.ready_links()

    async def _gather(self, step: int, collector: StepCollector) -> set[int]:
        """Wait for every expected digest until the gather deadline, or, once every file has its winner, for a
        straggler grace more (a late reply can no longer change a winner); the workers still missing are late."""
        loop = self._loop
        deadline = loop.time() + self.deadlines.gather
        complete = loop.create_task(collector.complete.wait())
        decided = loop.create_task(collector.all_decided.wait())
        try:
            done, _ = await asyncio.wait({complete, decided}, timeout=self.deadlines.gather,
                                         return_when=asyncio.FIRST_COMPLETED)
            if decided in done and complete not in done:
                grace = min(self.deadlines.straggler_grace(collector.finish_times), deadline - loop.time())
                await asyncio.wait({complete}, timeout=max(0.0, grace))
        finally:
            complete.cancel()
            decided.cancel()
        if collector.missing_workers():
            log.warning("step %d: workers %s had not sent their digests in %.1fs: erased for this step",
                        step, list(collector.missing_workers()), loop.time() - deadline + self.deadlines.gather)
        self.collector = None
        late = set(collector.missing_workers())
        for worker in late:
            link = self.pool.link(worker)
            if link is not None:
                self.pool.set_state(link, WorkerState.LATE)
        return late

    async def _exact_vote(self, collector: StepCollector,
                          times: dict[str, float]) -> tuple[VoteResult[bytes], list[int], FetchReport]:
        mark = time.perf_counter()
        vote = vote_digests(self.plan.placement, collector.replies)
        times["vote"] = time.perf_counter() - mark
        mark = time.perf_counter()
        for file_vote in vote.files:  # files decided by the streaming vote are already being fetched
            if file_vote.winner is not None:
                self._start_fetch(collector, file_vote.file, file_vote.winner)
        report = await self.fetcher.finish()
        times["gather"] = time.perf_counter() - mark
        if report.invalid:
            vote = vote_digests(self.plan.placement, collector.replies, invalid=report.invalid)
        won = [file for file in vote.files_won if file in report.fetched]
        return vote, won, report

    async def _auto_vote(self, collector: StepCollector,
                         times: dict[str, float]) -> tuple[VoteResult[bytes], list[int], FetchReport]:
        return await self.auto.run(collector.step, collector, times)

    async def _tolerant_vote(self, collector: StepCollector,
                             times: dict[str, float]) -> tuple[Any, list[int], FetchReport]:
        """Tolerant mode (mixed hardware): fetch every replica, vote on the vectors with ``--vote-rtol``. Ingress is
        f*r*d floats; each payload must still hash to its sender's own digest."""
        mark = time.perf_counter()
        report = self.fetcher.report
        replicas: list[dict[int, np.ndarray]] = [{} for _ in collector.replies]

        async def fetch(file: int, worker: int, digest: bytes) -> None:
            link = self.pool.link(worker)
            buffer = self._replica_buffer(file, worker)
            got = await self.fetcher.fetch_replica(link, file, buffer) if link is not None else None
            if got == digest:
                replicas[file][worker] = buffer
            elif got is not None:
                report.lying.add(worker)

        await asyncio.gather(*(fetch(file, worker, digest) for file, replies in enumerate(collector.replies)
                               for worker, digest in replies.items()))
        times["gather"] = time.perf_counter() - mark
        mark = time.perf_counter()
        vote = await self._loop.run_in_executor(None, lambda: vote_tolerant(
            self.plan.placement, replicas, rtol=self.plan.config.vote_rtol))
        for file_vote in vote.files:
            if file_vote.won:
                self._rows[file_vote.file] = file_vote.winner
        times["vote"] = time.perf_counter() - mark
        return vote, list(vote.files_won), report

    def _replica_buffer(self, file: int, worker: int) -> np.ndarray:
        buffer = self._replicas.get((file, worker))
        if buffer is None:
            buffer = self._replicas[(file, worker)] = np.empty(self.d, dtype=np.float32)
        return buffer

    async def _apply(self, step: int, lr: float, result: AggregationOutcome) -> None:
        """The update, shielded: once started it completes even if the run is interrupted (see :meth:`close`)."""
        if result.gradient is None:
            log.warning("step %d: update skipped: %s", step, result.reason)
            self.completed_steps = step + 1
            return
        future = self._loop.run_in_executor(None, self.optimizer.step, result.gradient, lr)
        self._update = (step, future)
        await asyncio.shield(future)
        self._update = None
        self.aggregation.commit()
        self.completed_steps = step + 1

    async def close(self) -> None:
        """Cancel what is in flight and let a started update finish, so the state is that of a whole step."""
        self.collector = None
        await self.fetcher.cancel()
        if self._update is not None:
            step, future = self._update
            await asyncio.gather(future, return_exceptions=True)
            if future.exception() is None:
                self.aggregation.commit()
                self.completed_steps = step + 1
            self._update = None
        await self.broadcaster.close()

    @staticmethod
    def _traffic(links: list[AgentLink]) -> tuple[int, int]:
        return sum(link.conn.bytes_in for link in links), sum(link.conn.bytes_out for link in links)

    @staticmethod
    def _honest_loss(collector: StepCollector, exclude: set[int]) -> float | None:
        values = [loss for worker, losses in collector.losses.items() if worker not in exclude for loss in losses]
        return float(np.mean(values)) if values else None
