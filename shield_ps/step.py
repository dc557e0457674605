"""One training step on the PS, as a sequence of phases each bounded by its own deadline (Konstantinidis and
Ramamoorthy, MLSys 2021, Sec. 3; ../shared/ARCHITECTURE.md; docs/liveness.md for every deadline):

broadcast (:mod:`shield_ps.phases.broadcast`, the relay tree :mod:`shield_ps.phases.relay_round`) -> gather digests,
with each file fetched as soon as r' equal digests are in (:mod:`shield_ps.phases.gather`, :mod:`shield_ps.collector`,
:mod:`shield_ps.phases.fetch`) -> vote and the remaining fetches (:mod:`shield_ps.phases.vote`, ``auto``:
:mod:`shield_ps.phases.auto_vote`) -> attack simulation and aggregation, or a skipped update
(:mod:`shield_ps.phases.aggregate`) -> update.

No phase waits on a peer past its deadline: a worker that misses one is erased or cut off for the step and recorded
(:mod:`shield_ps.phases.accounting`), and the step goes on. A worker proven to lie sits out a growing number of steps
(:mod:`shield_ps.phases.exclusion`). Heavy work runs in executor threads.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from byzantine.groups import could_bias
from byzantine.sketch import DEFAULT_PARAMS
from byzantine.vote import VoteMode
from shield_ps.collector import DigestRejected, StepCollector
from shield_ps.errors import TrainingError
from shield_ps.events import WorkerState
from shield_ps.job import JobPlan
from shield_ps.optimizer import MomentumSGD
from shield_ps.phases.accounting import StepAccount
from shield_ps.phases.aggregate import Aggregation, AggregationOutcome, ShortStep
from shield_ps.phases.audit import Audit, candidates, pick
from shield_ps.phases.auto_vote import AutoVote
from shield_ps.phases.broadcast import Broadcaster
from shield_ps.phases.deadlines import Deadlines
from shield_ps.phases.exclusion import Exclusions
from shield_ps.phases.fetch import Fetcher
from shield_ps.phases.gather import Gather
from shield_ps.phases.groups import SplitFiles
from shield_ps.phases.names import TOTAL, Phase
from shield_ps.phases.relay_round import RelayRound
from shield_ps.phases.sketch import SketchRound
from shield_ps.phases.vote import ExactVote, TolerantVote, VoteOutcome, VotePhase
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
    excluded: list[int] = field(default_factory=list)  # proven liars sitting this step out

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
        self.deadlines = Deadlines.from_config(cfg)
        self.broadcaster = Broadcaster(d, self.deadlines, cfg.codec, cfg.codec_level, self._on_sent, self._on_slow)
        self._secret = secret or secrets.token_bytes(32)
        self.fetcher = Fetcher(self._rows, self.deadlines, self._secret, pool.link, self._on_violation)
        self.aggregation = Aggregation(plan, self._rows, ShortStep(cfg.short_step))
        self.sketches = SketchRound(DEFAULT_PARAMS, f, d, self.deadlines.latency, pool.link, self._on_violation,
                                    grace=self.deadlines.straggler_grace)
        splits = SplitFiles(self.fetcher, self._rows, self.deadlines, plan.placement.r_prime, DEFAULT_PARAMS)
        self.auto = AutoVote(plan.placement, self.fetcher, self.sketches, self._rows, self._start_fetch, splits)
        self.auto.class_of = self._class_of
        self.audit = Audit(self.fetcher, d, DEFAULT_PARAMS)
        self.vote_mode = VoteMode(cfg.vote)
        self._votes: dict[VoteMode, VotePhase] = {
            VoteMode.EXACT: ExactVote(plan.placement, self.fetcher, self._start_fetch),
            VoteMode.AUTO: self.auto,
            VoteMode.TOLERANT: TolerantVote(plan.placement, self.fetcher, pool, self._rows, cfg.vote_rtol)}
        self.relays = RelayRound(self.deadlines, self._secret, enabled=cfg.relay == "on", roots=cfg.relay_roots,
                                 fanout=cfg.relay_fanout, nbytes=d * 4)
        self.gather = Gather(self.deadlines)
        self.exclusions = Exclusions()
        self.collector: StepCollector | None = None
        self.completed_steps: int | None = None
        self._step_lying: set[int] = set()
        self._step_slow: set[int] = set()
        self._update: tuple[int, asyncio.Future[None]] | None = None
        self._loop = asyncio.get_event_loop()

    @property
    def relay_book(self) -> Any:
        return self.relays.book

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
        """Called for every RELAY message: ``link``'s relay failed it (:mod:`shield_ps.phases.relay_round`)."""
        self.relays.on_complaint(link, header, self.broadcaster.send_direct, self.gather.changed)

    def _class_of(self, worker: int) -> str:
        link = self.pool.link(worker)
        return str(link.extra.get("class", "unknown")) if link is not None else "unknown"

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
        excluded = self.exclusions.excluded(step)
        links = [link for link in await self._ready_links() if link.worker not in excluded]
        bytes_before = self._traffic(links)
        self.pool.step = step
        self._step_lying, self._step_slow = set(), set()
        self.fetcher.begin(step)
        collector = StepCollector(step, plan.placement.f, {link.worker: link.files for link in links},
                                  r_prime=plan.placement.r_prime, on_winner=self._on_winner)
        self.collector = collector
        sources = self.relays.plan(step, links, self.fetcher.uplink_rates)
        _, busy = await self.broadcaster.start(step, lr, self.optimizer.params, links, sources)
        for worker in busy:
            self._step_slow.add(worker)
            collector.drop_worker(worker)
        times[Phase.BROADCAST.value] = time.perf_counter() - started

        mark = time.perf_counter()
        late = await self.gather.run(step, collector, self.relays.protected_until)
        self.relays.end_step(late)
        self.collector = None
        self._mark_late(late)
        times[Phase.DIGEST_GATHER.value] = time.perf_counter() - mark

        self.auto.last = {}
        outcome = await self._votes[self.vote_mode].run(step, collector, times)
        self._start_audit(outcome, collector.replies)

        mark = time.perf_counter()
        byzantine = plan.byzantine.at(step) if plan.byzantine is not None else ()
        result = await self._loop.run_in_executor(None, self.aggregation.run, step, outcome.won, byzantine,
                                                  len(outcome.provable))
        times[Phase.AGGREGATE.value] = time.perf_counter() - mark
        mark = time.perf_counter()
        await self._apply(step, lr, result)
        times[Phase.UPDATE.value] = time.perf_counter() - mark
        unanswered = await outcome.settle() if outcome.settle is not None else set()
        audit_lying, audit_slow = await self._settle_audit(outcome)
        times[TOTAL] = time.perf_counter() - started

        report, vote = outcome.report, outcome.vote
        lying = self._step_lying | report.lying | audit_lying
        self.exclusions.convict(step, lying)
        present = {w for replies in collector.replies for w in replies}
        account = StepAccount.build(
            lying=lying, outvoted=set(vote.disagreeing) | (result.attack_outvoted & present),
            slow=self._step_slow | report.slow | late | audit_slow | unanswered,
            erased=(set(range(plan.placement.K)) - {link.worker for link in links}) | collector.lost | late,
            relay=self.relays.blame())
        bytes_in, bytes_out = (now - before for now, before in zip(self._traffic(links), bytes_before, strict=False))
        corrupted = set(result.corrupted) | self._real_corruption(outcome, collector.replies, set(byzantine),
                                                                  result.simulated)
        return StepOutcome(
            step=step, lr=lr, loss=self._honest_loss(collector, set(byzantine) | set(account.lying)
                                                     | set(account.outvoted)),
            files=plan.placement.f, files_won=len(outcome.won), files_dropped=plan.placement.f - len(outcome.won),
            files_corrupted=len(corrupted), account=account,
            aggregation={"action": result.action, "s": result.s, "reason": result.reason},
            hedges=report.hedges, sketch=outcome.sketch, bytes_in=bytes_in, bytes_out=bytes_out, times=times,
            codecs={"out": dict(self.broadcaster.codecs), "in": dict(report.codecs)},
            relay_tree=self.relays.fields(len(self.broadcaster.direct)), excluded=sorted(excluded))

    def _mark_late(self, late: set[int]) -> None:
        for worker in late:
            link = self.pool.link(worker)
            if link is not None:
                self.pool.set_state(link, WorkerState.LATE)

    def _start_audit(self, outcome: VoteOutcome, replies: list[dict[int, bytes]]) -> None:
        """``--vote auto``: fetch one payload whose holder only its sketch may absolve (:mod:`..phases.audit`)."""
        target = pick(candidates(outcome.excusable, replies), self._secret, self.sketches.seed)
        if target is not None:
            self.audit.start(target)

    async def _settle_audit(self, outcome: VoteOutcome) -> tuple[set[int], set[int]]:
        """The audit's verdict, once the step's blame is final: (lying, slow)."""
        target = self.audit.target
        if self.audit.task is None or target is None:
            return set(), set()
        absolved = target.worker in outcome.vote.files[target.file].holders
        claimed = outcome.answers[target.file].get(target.worker) if outcome.answers else None
        await self.audit.settle(self.deadlines.hedge_delay(self.d * 4), claimed, absolved, self.sketches.seed)
        verdict = self.audit.verdict
        return ({target.worker}, set()) if verdict == "lying" else (
            (set(), {target.worker}) if verdict == "slow" else (set(), set()))

    @staticmethod
    def _real_corruption(outcome: VoteOutcome, replies: list[dict[int, bytes]], byzantine: set[int],
                         simulated: bool) -> set[int]:
        """Files whose row a (known) Byzantine worker on the wire could have set: an exact winner every holder of
        whose digest is Byzantine, or a group median at least half of whose inputs are Byzantine payloads."""
        if simulated or not byzantine:
            return set()
        out = set()
        for file in outcome.won:
            used = outcome.used.get(file)
            if used is not None:
                if could_bias([w for _, w in used], [all(h in byzantine for h in holders) for holders, _ in used]):
                    out.add(file)
                continue
            holders = outcome.vote.files[file].holders
            winner = outcome.vote.files[file].winner
            committed = [w for w in holders if replies[file].get(w) == winner] if winner is not None else []
            if committed and all(w in byzantine for w in committed):
                out.add(file)
        return out

    async def _ready_links(self) -> list[AgentLink]:
        links = self.pool.ready_links()
        if links:
            return links
        timeout = self.plan.config.join_timeout
        log.warning("no agent is connected: waiting up to %.0fs (--join-timeout) for one", timeout)
        if await self.pool.wait_ready(1, timeout) == 0:
            raise TrainingError(f"no agent was connected for --join-timeout {timeout:.0f}s")
        return self.pool.ready_links()

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
