"""One training step on the PS: broadcast, gather digests, vote, fetch one verified payload per file, simulate the
attack, aggregate, update (Konstantinidis and Ramamoorthy, MLSys 2021, Sec. 3; ../shared/ARCHITECTURE.md).

The parameters are snapshotted into a reused buffer and the STEP frames are sent from it in the background: the
broadcast phase is the PS's own time (snapshot, encode, hand-off), and delivery overlaps the wait for digests.
The PS fetches each winning file's vector from one holder of the winning digest and checks the payload against it,
so its ingress is about f*d floats per step rather than f*r*d. A holder whose payload does not match is flagged and
the next holder is asked. Heavy work (encoding, hashing, aggregation, the update) runs in executor threads.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from shield_ps.byzantine.aggregators import aggregate
from shield_ps.byzantine.attacks import simulate_attack
from shield_ps.byzantine.vote import VoteResult, vote_digests, vote_tolerant
from shield_ps.collector import DigestRejected, StepCollector
from shield_ps.errors import AggregationError, TrainingError
from shield_ps.job import JobPlan
from shield_ps.optimizer import MomentumSGD
from shield_ps.events import WorkerState
from shield_ps.pool import AgentLink, WorkerPool
from wire import ConnectionClosed, Kind, RemoteError, WireError, WireTimeoutError

log = logging.getLogger(__name__)


@dataclass
class StepOutcome:
    """What one step did (the fields of the ``step`` event)."""

    step: int
    lr: float
    loss: float | None
    files: int
    files_won: int
    files_dropped: int
    files_corrupted: int
    flagged: list[int]
    erased: list[int]
    bytes_in: int
    bytes_out: int
    times: dict[str, float] = field(default_factory=dict)
    codecs: dict[str, dict[str, int]] = field(default_factory=dict)  # direction -> codec -> vectors (--codec auto)

    def event_fields(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _count_codecs(codecs: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for codec in codecs:
        counts[codec.value] = counts.get(codec.value, 0) + 1
    return counts


def _has_non_finite(row: np.ndarray, zeros: np.ndarray) -> bool:
    """True when ``row`` holds a NaN or an Inf: 0 * x is NaN exactly for those, and BLAS reads at memory speed."""
    return not np.isfinite(np.dot(row, zeros))


class StepRunner:
    """Runs steps for one job over the agents in ``pool``; owns the preallocated per-step buffers."""

    def __init__(self, plan: JobPlan, pool: WorkerPool, optimizer: MomentumSGD,
                 on_protocol_violation: Callable[[AgentLink, str], None]) -> None:
        self.plan = plan
        self.pool = pool
        self.optimizer = optimizer
        self._violation = on_protocol_violation
        f, d = plan.placement.f, optimizer.params.shape[0]
        self.d = d
        self._rows = np.empty((f, d), dtype=np.float32)
        self._zeros = np.zeros(d, dtype=np.float32)
        self._replicas: dict[tuple[int, int], np.ndarray] = {}
        self._sent_params = np.empty(d, dtype=np.float32)
        self._broadcast: asyncio.Future[Any] | None = None
        self._codecs: dict[str, dict[str, int]] = {"out": {}, "in": {}}
        self.collector: StepCollector | None = None
        self._loop = asyncio.get_event_loop()

    def on_digest(self, link: AgentLink, header: dict[str, Any]) -> None:
        """Called by the agent's connection task for every DIGESTS message."""
        collector = self.collector
        if collector is None:
            return
        try:
            recorded = collector.add(link.worker, header)
        except DigestRejected as exc:
            self._violation(link, str(exc))
            return
        if recorded and collector.worker_done(link.worker):
            self.pool.set_state(link, WorkerState.DONE, compute_s=collector.compute_s.get(link.worker))

    def on_agent_lost(self, link: AgentLink) -> None:
        if self.collector is not None:
            self.collector.drop_worker(link.worker)

    async def run(self, step: int) -> StepOutcome:
        plan, cfg = self.plan, self.plan.config
        times: dict[str, float] = {}
        started = time.perf_counter()
        lr = plan.schedule.lr_at(step)
        links = self.pool.ready_links()
        if not links:
            raise TrainingError(f"step {step}: no agent is connected")
        bytes_before = self._traffic(links)
        self.pool.step = step
        collector = StepCollector(step, plan.placement.f, {link.worker: link.files for link in links})
        self.collector = collector

        await self._finish_broadcast()
        np.copyto(self._sent_params, self.optimizer.params)
        encoded = await self._encode_per_link(links)
        self._broadcast = asyncio.gather(*(self._send_step(link, step, lr, encoded[link.worker])
                                           for link in links))
        times["broadcast"] = time.perf_counter() - started

        mark = time.perf_counter()
        try:
            await asyncio.wait_for(collector.complete.wait(), cfg.gather_timeout)
        except asyncio.TimeoutError:
            log.warning("step %d: workers %s sent nothing in %.0fs: erased for this step",
                        step, list(collector.missing_workers()), cfg.gather_timeout)
        self.collector = None
        erased = sorted(set(range(plan.placement.K)) - {link.worker for link in links}
                        | set(collector.missing_workers()))
        for worker in collector.missing_workers():
            late = self.pool.link(worker)
            if late is not None:
                self.pool.set_state(late, WorkerState.LATE)
        times["compute"] = time.perf_counter() - mark

        if cfg.vote == "tolerant":
            vote, won, liars = await self._tolerant_vote(step, collector, times)
        else:
            mark = time.perf_counter()
            vote = vote_digests(plan.placement, collector.replies)
            times["vote"] = time.perf_counter() - mark
            mark = time.perf_counter()
            won, liars, invalid = await self._fetch_winners(step, vote)
            times["gather"] = time.perf_counter() - mark
            if invalid:
                vote = vote_digests(plan.placement, collector.replies, invalid=invalid)
                won = [file for file in won if vote.files[file].won]

        mark = time.perf_counter()
        byzantine = plan.byzantine.at(step) if plan.byzantine is not None else ()
        gradient, corrupted, attack_flagged = await self._loop.run_in_executor(
            None, self._attack_and_aggregate, step, won, byzantine)
        times["aggregate"] = time.perf_counter() - mark

        mark = time.perf_counter()
        await self._loop.run_in_executor(None, self.optimizer.step, gradient, lr)
        times["update"] = time.perf_counter() - mark
        times["total"] = time.perf_counter() - started

        present = {w for file in collector.replies for w in file}
        flagged = sorted(set(vote.disagreeing) | liars | (attack_flagged & present))
        bytes_in, bytes_out = (now - before for now, before in zip(self._traffic(links), bytes_before))
        return StepOutcome(
            step=step, lr=lr, loss=self._honest_loss(collector, set(byzantine) | set(flagged)),
            files=plan.placement.f, files_won=len(won), files_dropped=plan.placement.f - len(won),
            files_corrupted=len(corrupted), flagged=flagged, erased=erased, bytes_in=bytes_in,
            bytes_out=bytes_out, times=times, codecs=self._codecs)

    async def _finish_broadcast(self) -> None:
        """Wait until the previous STEP frames are out (they are sent zero-copy from ``_sent_params``)."""
        if self._broadcast is not None:
            await self._broadcast
            self._broadcast = None

    async def close(self) -> None:
        await self._finish_broadcast()

    async def _encode_per_link(self, links: list[AgentLink]) -> dict[int, Any]:
        """The parameters encoded once per codec that some link uses (``--codec auto`` picks per link, from the
        link's measured rate: wire.autocodec); worker -> encoded vector."""
        cfg = self.plan.config
        picks = {link.worker: link.conn.pick_codec(cfg.codec, cfg.codec_level) for link in links}
        self._codecs = {"out": _count_codecs(codec for codec, _ in picks.values()), "in": {}}
        by_pick: dict[Any, Any] = {}
        for link in links:
            pick = picks[link.worker]
            if pick not in by_pick:
                by_pick[pick] = await self._loop.run_in_executor(None, link.conn.encode_timed, self._sent_params,
                                                                 *pick)
        return {worker: by_pick[pick] for worker, pick in picks.items()}

    async def _send_step(self, link: AgentLink, step: int, lr: float, encoded: Any) -> None:
        try:
            await link.conn.send(Kind.STEP, {"step": step, "lr": lr}, vector=encoded)
            self.pool.set_state(link, WorkerState.COMPUTING)
        except (WireError, ConnectionClosed) as exc:
            log.info("step %d: could not send to worker %d: %s", step, link.worker, exc)

    @staticmethod
    def _traffic(links: list[AgentLink]) -> tuple[int, int]:
        return sum(link.conn.bytes_in for link in links), sum(link.conn.bytes_out for link in links)

    async def _fetch_winners(self, step: int, vote: VoteResult[bytes]) -> tuple[list[int], set[int], set[bytes]]:
        """Fetch every winning file into its row; returns the files fetched, the workers caught lying about their
        payload, and the winning digests whose payload was not finite."""
        liars: set[int] = set()
        invalid: set[bytes] = set()
        files = [file_vote.file for file_vote in vote.files if file_vote.won]
        results = await asyncio.gather(*(self._fetch_one(step, vote.files[file], liars, invalid) for file in files))
        return [file for file, ok in zip(files, results) if ok], liars, invalid

    async def _fetch_one(self, step: int, file_vote: Any, liars: set[int], invalid: set[bytes]) -> bool:
        holders = list(file_vote.holders)
        start = (step + file_vote.file) % len(holders)
        row = self._rows[file_vote.file]
        for worker in holders[start:] + holders[:start]:
            link = self.pool.link(worker)
            digest = await self._fetch_into(link, step, file_vote.file, row) if link is not None else None
            if digest is None:
                continue
            if digest != file_vote.winner:
                log.warning("step %d: worker %d's payload for file %d does not match the digest it voted",
                            step, worker, file_vote.file)
                liars.add(worker)
                continue
            if await self._loop.run_in_executor(None, _has_non_finite, row, self._zeros):
                invalid.add(file_vote.winner)
                return False
            return True
        return False

    async def _tolerant_vote(self, step: int, collector: StepCollector,
                             times: dict[str, float]) -> tuple[Any, list[int], set[int]]:
        """Tolerant mode (mixed hardware): fetch every replica, vote on the vectors with ``--vote-rtol``. Ingress is
        f*r*d floats; each payload must still hash to its sender's own digest."""
        mark = time.perf_counter()
        liars: set[int] = set()
        replicas: list[dict[int, np.ndarray]] = [{} for _ in collector.replies]

        async def fetch(file: int, worker: int, digest: bytes) -> None:
            link = self.pool.link(worker)
            buffer = self._replica_buffer(file, worker)
            got = await self._fetch_into(link, step, file, buffer) if link is not None else None
            if got == digest:
                replicas[file][worker] = buffer
            elif got is not None:
                liars.add(worker)

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
        return vote, list(vote.files_won), liars

    def _replica_buffer(self, file: int, worker: int) -> np.ndarray:
        buffer = self._replicas.get((file, worker))
        if buffer is None:
            buffer = self._replicas[(file, worker)] = np.empty(self.d, dtype=np.float32)
        return buffer

    async def _fetch_into(self, link: AgentLink, step: int, file: int, dest: np.ndarray) -> bytes | None:
        """FETCH ``file`` from ``link`` into ``dest``; returns the payload's digest, or None if none came."""
        try:
            msg = await link.conn.request(Kind.FETCH, {"step": step, "file": file},
                                          timeout=self.plan.config.upload_timeout)
        except (RemoteError, WireTimeoutError, ConnectionClosed, WireError) as exc:
            log.info("step %d: worker %d did not deliver file %d: %s", step, link.worker, file, exc)
            return None
        if msg.kind is not Kind.VECTOR or msg.vector is None or msg.vector.n != self.d:
            msg.discard()
            self._violation(link, f"FETCH answered with {msg.kind.value} of the wrong shape")
            return None
        incoming = self._codecs["in"]
        incoming[msg.vector.codec.value] = incoming.get(msg.vector.codec.value, 0) + 1
        try:
            return await msg.read_vector_into(dest)
        except WireError as exc:
            self._violation(link, f"bad VECTOR payload: {exc}")
            return None

    def _attack_and_aggregate(self, step: int, won: list[int],
                              byzantine: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...], set[int]]:
        plan = self.plan
        if not won:
            raise TrainingError(f"step {step}: no file has a majority of its r={plan.placement.r} holders "
                                f"(need r'={plan.placement.r_prime} matching replies); the run cannot go on")
        corrupted: tuple[int, ...] = ()
        attack_flagged: set[int] = set()
        if plan.attack is not None and byzantine:
            lost = sorted(set(range(plan.placement.f)) - set(won))
            if lost:  # rows without a winner: stand-ins for the attack's statistics, excluded below
                self._rows[lost] = self._rows[won].mean(axis=0)
            z = "auto" if plan.config.alie_z == "auto" else float(plan.config.alie_z)
            result = simulate_attack(plan.attack, self._rows, plan.placement, byzantine, c=plan.config.attack_c,
                                     z=z, inplace=True)
            corrupted = tuple(f for f in result.corrupted if f in set(won))
            attack_flagged = set(result.vote.disagreeing)
        for position, file in enumerate(won):
            if position != file:
                self._rows[position] = self._rows[file]
        matrix = self._rows[:len(won)]
        try:
            gradient = aggregate(plan.aggregator, matrix, check_finite_input=False, **plan.aggregation_kwargs(step))
        except AggregationError as exc:
            raise TrainingError(f"step {step}: {len(won)} of {plan.placement.f} files survived the vote and "
                                f"{plan.aggregator.value} cannot aggregate them: {exc}") from None
        return np.ascontiguousarray(gradient, dtype=np.float32), corrupted, attack_flagged

    @staticmethod
    def _honest_loss(collector: StepCollector, exclude: set[int]) -> float | None:
        values = [loss for worker, losses in collector.losses.items() if worker not in exclude for loss in losses]
        return float(np.mean(values)) if values else None
