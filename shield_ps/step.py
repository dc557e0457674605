"""One training step on the PS, as a sequence of phases each bounded by its own deadline (Konstantinidis and
Ramamoorthy, MLSys 2021, Sec. 3; ../shared/ARCHITECTURE.md; docs/liveness.md for every deadline):

broadcast (:mod:`shield_ps.phases.broadcast`, the relay tree :mod:`shield_ps.phases.relay_round`) -> gather digests,
with each file fetched as soon as r' equal digests are in (:mod:`shield_ps.phases.gather`, :mod:`shield_ps.collector`,
:mod:`shield_ps.phases.fetch`) -> vote and the remaining fetches (:mod:`shield_ps.phases.vote`, ``auto``:
:mod:`shield_ps.phases.auto_vote`) -> attack simulation and aggregation, or a skipped update
(:mod:`shield_ps.phases.aggregate`) -> update.

Each phase is built once, wired to the phases it feeds, and owns its state and deadline; :meth:`StepRunner.run` only
sequences them. The agents' messages go straight to the phase that takes them (digests to the gather's intake, which
starts each winner's fetch itself; sketches to the sketch round), and the vectors the phases share (the (f, d) rows,
the spare vectors) have one owner, :class:`~shield_ps.phases.buffers.StepBuffers`.

No phase waits on a peer past its deadline: a worker that misses one is erased or cut off for the step and recorded
(:mod:`shield_ps.phases.accounting`), and the step goes on. A worker proven to lie sits out a growing number of steps
(:mod:`shield_ps.phases.exclusion`). Heavy work runs in executor threads.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from byzantine.sketch import DEFAULT_PARAMS
from byzantine.vote import VoteMode
from shield_ps.errors import TrainingError
from shield_ps.events import WorkerState
from shield_ps.job import JobPlan
from shield_ps.optimizer import MomentumSGD
from shield_ps.phases.accounting import StepAccount, honest_loss, real_corruption
from shield_ps.phases.aggregate import Aggregation, AggregationOutcome, ShortStep
from shield_ps.phases.audit import Audit
from shield_ps.phases.auto_vote import AutoVote
from shield_ps.phases.broadcast import Broadcaster
from shield_ps.phases.buffers import StepBuffers
from shield_ps.phases.deadlines import Deadlines
from shield_ps.phases.exclusion import Exclusions
from shield_ps.phases.fetch import Fetcher
from shield_ps.phases.gather import DigestIntake, Gather
from shield_ps.phases.groups import SplitFiles
from shield_ps.phases.names import TOTAL, Phase
from shield_ps.phases.relay_round import RelayRound
from shield_ps.phases.sketch import SketchRound
from shield_ps.phases.vote import ExactVote, TolerantVote, VotePhase
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
    """Runs steps for one job over the agents in ``pool``: builds and wires the phases, then sequences them."""

    def __init__(self, plan: JobPlan, pool: WorkerPool, optimizer: MomentumSGD,
                 on_protocol_violation: Callable[[AgentLink, str], None], *, secret: bytes | None = None) -> None:
        cfg = plan.config
        self.plan, self.pool, self.optimizer = plan, pool, optimizer
        self._drop = on_protocol_violation
        placement = plan.placement
        self.d = d = optimizer.params.shape[0]
        self.buffers = StepBuffers(placement.f, d)
        self.deadlines = Deadlines.from_config(cfg)
        self._secret = secret or secrets.token_bytes(32)
        self.fetcher = Fetcher(self.buffers, self.deadlines, self._secret, pool.link, self._on_violation)
        self.vote_mode = VoteMode(cfg.vote)
        streaming = cfg.streaming_vote and self.vote_mode is not VoteMode.TOLERANT
        self.intake = DigestIntake(placement.f, placement.r_prime, pool, self._on_violation,
                                   stream_to=self.fetcher if streaming else None)
        self.broadcaster = Broadcaster(d, self.deadlines, cfg.codec, cfg.codec_level, self.intake.on_sent,
                                       self._on_slow)
        self.aggregation = Aggregation(plan, self.buffers, ShortStep(cfg.short_step))
        self.sketches = SketchRound(DEFAULT_PARAMS, placement.f, d, self.deadlines.latency, pool.link,
                                    self._on_violation, grace=self.deadlines.straggler_grace)
        splits = SplitFiles(self.fetcher, self.buffers, self.deadlines, placement.r_prime, DEFAULT_PARAMS)
        self.auto = AutoVote(placement, self.fetcher, self.sketches, splits)
        self.auto.class_of = self._class_of
        self.audit = Audit(self.fetcher, d, DEFAULT_PARAMS)
        self._votes: dict[VoteMode, VotePhase] = {
            VoteMode.EXACT: ExactVote(placement, self.fetcher),
            VoteMode.AUTO: self.auto,
            VoteMode.TOLERANT: TolerantVote(placement, self.fetcher, pool, self.buffers, cfg.vote_rtol)}
        self.relays = RelayRound(self.deadlines, self._secret, enabled=cfg.relay == "on", roots=cfg.relay_roots,
                                 fanout=cfg.relay_fanout, nbytes=d * 4)
        self.gather = Gather(self.deadlines)
        self.exclusions = Exclusions()
        self.completed_steps: int | None = None
        self._step_lying: set[int] = set()
        self._step_slow: set[int] = set()
        self._update: tuple[int, asyncio.Future[None]] | None = None
        self._loop = asyncio.get_event_loop()
        # the agents' connection tasks call these: each message goes straight to the phase that takes it
        self.on_digest: Callable[[AgentLink, dict[str, Any]], None] = self.intake.on_digest
        self.on_sketch: Callable[[AgentLink, dict[str, Any]], None] = self.sketches.on_answer

    @property
    def relay_book(self) -> Any:
        return self.relays.book

    def set_tolerance(self, tol: float) -> None:
        """The sketch vote's relative tolerance (set from the determinism classes, shield_ps.classes)."""
        self.auto.tolerance = tol

    def on_agent_lost(self, link: AgentLink) -> None:
        self.fetcher.uplink_rates.pop(link.worker, None)  # its slot's next agent is measured afresh
        self.intake.drop_worker(link.worker)
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

    def _on_slow(self, worker: int, reason: str) -> None:
        self._step_slow.add(worker)

    # ---- the step ---------------------------------------------------------------------------------------------
    async def run(self, step: int) -> StepOutcome:
        """One step: broadcast, gather, vote and fetch, aggregate, update; then the step's account."""
        plan = self.plan
        times: dict[str, float] = {}
        started = time.perf_counter()
        lr = plan.schedule.lr_at(step)
        excluded = self.exclusions.excluded(step)
        links = [link for link in await self._ready_links() if link.worker not in excluded]
        bytes_before = self._traffic(links)
        self.pool.step = step
        self._step_lying, self._step_slow = set(), set()
        self.buffers.begin_step()
        self.fetcher.begin(step)
        collector = self.intake.open(step, links)
        with _timed(times, Phase.BROADCAST, started):
            await self._broadcast(step, lr, links)
        with _timed(times, Phase.DIGEST_GATHER):
            late = await self.gather.run(step, collector, self.relays.protected_until, self.relays.complained)
            self.relays.end_step(late)
            self.intake.close()
            self._mark_late(late)
        self.auto.last = {}
        outcome = await self._votes[self.vote_mode].run(step, collector, times)  # times its vote and its fetch
        self.audit.begin(outcome.excusable, collector.replies, self._secret, self.sketches.seed)
        byzantine = plan.byzantine.at(step) if plan.byzantine is not None else ()
        with _timed(times, Phase.AGGREGATE):
            result = await self._loop.run_in_executor(None, self.aggregation.run, step, outcome.won, byzantine,
                                                      len(outcome.provable))
        with _timed(times, Phase.UPDATE):
            await self._apply(step, lr, result)
        unanswered = await outcome.settle() if outcome.settle is not None else set()
        audit_lying, audit_slow = await self.audit.conclude(self.deadlines.hedge_delay(self.d * 4), outcome,
                                                            self.sketches.seed)
        times[TOTAL] = time.perf_counter() - started

        report, vote = outcome.report, outcome.vote
        lying = self._step_lying | report.lying | audit_lying
        self.exclusions.convict(step, lying)
        present = {w for replies in collector.replies for w in replies}
        account = StepAccount.build(
            lying=lying, outvoted=set(vote.disagreeing) | (result.attack_outvoted & present),
            slow=self._step_slow | report.slow | late | self.gather.held | audit_slow | unanswered,
            erased=(set(range(plan.placement.K)) - {link.worker for link in links}) | collector.lost | late,
            relay=self.relays.blame())
        bytes_in, bytes_out = (now - before for now, before in zip(self._traffic(links), bytes_before, strict=False))
        corrupted = set(result.corrupted) | real_corruption(outcome, collector.replies, set(byzantine),
                                                            result.simulated)
        return StepOutcome(
            step=step, lr=lr, loss=honest_loss(collector.losses, set(byzantine) | set(account.lying)
                                               | set(account.outvoted)),
            files=plan.placement.f, files_won=len(outcome.won), files_dropped=plan.placement.f - len(outcome.won),
            files_corrupted=len(corrupted), account=account,
            aggregation={"action": result.action, "s": result.s, "reason": result.reason},
            hedges=report.hedges, sketch=outcome.sketch, bytes_in=bytes_in, bytes_out=bytes_out, times=times,
            codecs={"out": dict(self.broadcaster.codecs), "in": dict(report.codecs)},
            relay_tree=self.relays.fields(len(self.broadcaster.direct)), excluded=sorted(excluded))

    async def _broadcast(self, step: int, lr: float, links: list[AgentLink]) -> None:
        """The parameters to every agent (directly or along the relay tree); one whose STEP could not be sent in
        time is slow and not waited for."""
        sources = self.relays.plan(step, links, self.fetcher.uplink_rates)
        _, busy = await self.broadcaster.start(step, lr, self.optimizer.params, links, sources)
        for worker in busy:
            self._step_slow.add(worker)
            self.intake.drop_worker(worker)

    def _mark_late(self, late: set[int]) -> None:
        for worker in late:
            link = self.pool.link(worker)
            if link is not None:
                self.pool.set_state(link, WorkerState.LATE)

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
        self.intake.close()
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


@contextmanager
def _timed(times: dict[str, float], phase: Phase, since: float | None = None) -> Iterator[None]:
    """``times[phase]``: the seconds the block took (from ``since``, a ``perf_counter`` reading, when given)."""
    mark = time.perf_counter() if since is None else since
    try:
        yield
    finally:
        times[phase.value] = time.perf_counter() - mark
