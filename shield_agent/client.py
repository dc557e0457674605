"""One worker slot's session with the PS: receive the job, compute files per step, answer fetches.

One session per connection, and one connection per worker slot (:mod:`shield_agent.slots` runs a process's slots
and reconnects them; :mod:`shield_agent.host` says what they share). The PS sends JOB (a request; we load the data,
build the model and reply JOB with our parameter count), then for every step a STEP with the parameter vector, or
with where to take it (the relay broadcast, :mod:`shield_agent.relay`). We compute our files one by one on the
process's compute pool (torch releases the GIL, so the event loop keeps answering heartbeats) and send a DIGESTS
message per file as soon as it is ready. The PS then FETCHes the payload of one file from one holder; we reply with
a VECTOR.

A new STEP while the previous step is still being computed (the PS gave up on us) cancels the old computation after
its current file. The PS ends the run with LEAVE.

A Byzantine agent (``--adversary``, :mod:`shield_agent.adversary`) is this session with an :class:`Adversary`
consulted at a few named hooks: the JOB reply's probe, each STEP, a relayed step, what a file's gradient commits to,
what is sketched, and each FETCH. An honest session's adversary has no behaviour, and each hook is then skipped.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np

from shield_agent.adversary import Adversary
from shield_agent.errors import AGENT_ERRORS
from shield_agent.fingerprint import parse_probe, probe_fields
from shield_agent.host import ComputeHost
from shield_agent.job import AgentJob, AgentOptions
from shield_agent.relay import RelayHub, RelaySource
from shield_agent.sketching import answers as sketch_answers
from shield_model.errors import ComputeError, DatasetError
from wire import ConnectionClosed, Kind, Message, MessageError, digest_bytes
from wire.job import JobAccept
from wire.messages import (
    DigestReport,
    ErrorReply,
    RelayComplaint,
    VectorReply,
    parse_fetch_request,
    parse_leave,
    parse_step_order,
)
from wire.sketch import SketchHeaderError, SketchRequest, parse_sketch_request

if TYPE_CHECKING:
    from shield_agent.synthetic_slot import LazyFiles

log = logging.getLogger(__name__)


class _StepWork:
    """The computation of one step: our files in order, cancellable between files."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.done: set[int] = set()
        self.cancelled = False
        self.task: asyncio.Task[None] | None = None


class AgentSession:
    """One authenticated connection to the PS, from JOB to LEAVE or disconnect."""

    _lazy: LazyFiles | None = None  # a synthetic job's gradients, regenerated instead of stored (no self._grads)

    def __init__(self, options: AgentOptions, conn: Any, host: ComputeHost | None = None,
                 relay: RelayHub | None = None) -> None:
        self.options = options
        self.conn = conn
        self.host = host or ComputeHost(1)
        self._own_host = host is None
        self.relay = relay or RelayHub(options.token)  # without a server: it can still take vectors from relays
        self._relay_task: asyncio.Task[None] | None = None
        self.job: AgentJob | None = None
        self.computer: Any = None
        self._executor: concurrent.futures.Executor | None = None
        self._params: list[np.ndarray] = []
        self._grads: dict[int, np.ndarray] = {}
        self._work: _StepWork | None = None
        self.adversary = Adversary(options.adversary)
        self._sketched: dict[int, np.ndarray] = {}  # a sketch-liar's: what it sketches instead of what it committed
        self._spawned: set[asyncio.Task[None]] = set()
        self._sketching: set[asyncio.Task[None]] = set()  # SKETCH answers being computed (they read this step's
        # gradients: the next step's computation waits for them)
        self.finished = False
        self.end_reason: str | None = None  # what the PS's LEAVE said
        self.plugin_fields: dict[str, str] = {}  # this copy's plug-in digests, for the JOB reply

    async def run(self) -> None:
        try:
            async for msg in self.conn:
                await self._dispatch(msg)
                if self.finished:
                    break
        finally:
            await self._cancel_relay()
            for task in list(self._spawned | self._sketching):
                task.cancel()
            await asyncio.gather(*self._spawned, *self._sketching, return_exceptions=True)
            if self._work is not None:
                self._work.cancelled = True
                if self._work.task is not None:
                    await asyncio.gather(self._work.task, return_exceptions=True)
            if self.job is not None:
                self.relay.store.left(self.job.worker)
            if self._own_host:
                self.host.shutdown()

    async def _dispatch(self, msg: Message) -> None:
        match msg.kind:
            case Kind.JOB:
                await self._on_job(msg)
            case Kind.STEP:
                await self._on_step(msg)
            case Kind.FETCH:
                await self._on_fetch(msg)
            case Kind.SKETCH:
                self._on_sketch(msg)
            case Kind.LEAVE:
                try:
                    self.end_reason = parse_leave(msg.header).reason
                except MessageError as exc:
                    self.end_reason = str(exc)[:200]
                self.finished = True
            case _:
                msg.discard()
                log.warning("ignoring unexpected %s from the PS", msg.kind.value)

    async def _on_job(self, msg: Message) -> None:
        try:
            job = AgentJob.from_header(msg.header)
        except ComputeError as exc:
            await self.conn.reply(msg, Kind.ERROR, ErrorReply(exc.code, str(exc)).header())
            raise
        threads = self.options.threads or job.threads
        loop = asyncio.get_running_loop()
        self._executor = self.host.executor(threads)
        try:
            probe = parse_probe(job.probe, job.num_files)
            self.computer = await loop.run_in_executor(self._executor, self._make_computer, job, threads)
            fingerprint = await loop.run_in_executor(self._executor, probe_fields, self.computer, probe, threads,
                                                     self.adversary)
        except AGENT_ERRORS as exc:
            await self.conn.reply(msg, Kind.ERROR, ErrorReply(exc.code, str(exc)).header())
            raise
        d = self.computer.num_params
        self._params = [np.empty(d, np.float32), np.empty(d, np.float32)]
        from shield_agent.synthetic_slot import lazy_files

        self._lazy = lazy_files(self.computer, self.adversary, job.worker)
        self._grads = {} if self._lazy is not None else {f: np.empty(d, np.float32) for f in job.files}
        self.job = job
        self.relay.store.joined(job.worker)
        log.info("became worker %d of the PS (files %s, %d parameters)", job.worker, list(job.files), d)
        accept = JobAccept(d, job.worker, relay_port=self.relay.port or None,
                           relay_id=self.relay.id if self.relay.port else None,
                           network_digest=self.plugin_fields.get("network_digest"),
                           dataset_digest=self.plugin_fields.get("dataset_digest"))
        # the fingerprint fields as probe_fields wrote them: a Byzantine behaviour may have put its lie there
        await self.conn.reply(msg, Kind.JOB, {**accept.header(), **fingerprint})

    def _make_computer(self, job: AgentJob, threads: int) -> Any:
        """The job's gradient computer: torch's (built by the process's compute host), or the synthetic one of a
        benchmark job (shield_model.synthetic)."""
        from shield_agent.synthetic_slot import make_computer

        synthetic = make_computer(job.synthetic_d, self.options.synthetic, job.seed)
        if synthetic is not None:
            return synthetic
        from shield_agent.plugin_admission import check_job_plugins
        from shield_model.compute import ComputeSpec
        from shield_model.zoo.sources import locate

        self.plugin_fields = check_job_plugins(job, self.options.plugins)  # before anything is loaded
        data_dir = str(locate(job.dataset, self.options.data_dir).path)
        computer = self.host.build(ComputeSpec(job.network, job.dataset, data_dir, job.seed,
                                               job.batch_size, job.num_files, threads, device=self.options.device))
        have = computer.train_samples
        if job.train_samples is not None and have != job.train_samples:
            raise DatasetError(f"the PS trains on {job.dataset} with {job.train_samples} training images, the data "
                               f"here ({data_dir}) has {have}: pass --data-dir with the PS's data (its printed "
                               "join command names it)")
        return computer

    async def _on_step(self, msg: Message) -> None:
        taker = self.adversary.takes("on_step")
        if taker is not None:
            await taker.on_step(self, msg)
            return
        await self.honest_step(msg)

    async def honest_step(self, msg: Message) -> None:
        """STEP t: the parameters follow in the message, or (relay broadcast) the header says where to take them."""
        try:
            order = parse_step_order(msg.header)
        except MessageError as exc:
            msg.discard()
            raise ComputeError(f"malformed STEP: {exc}") from None
        if self.job is None or (msg.vector is None and order.relay is None):
            msg.discard()
            raise ComputeError("STEP before JOB, or without parameters")
        step, expected = order.step, order.params_digest
        if self._work is not None:
            self._work.cancelled = True
        await self._cancel_relay()
        params = self._params[step % 2]
        await self.relay.store.reclaim(params)  # other agents may still be reading step t-2's vector from it
        if msg.vector is None:
            if expected is None or order.relay is None:
                raise ComputeError(f"malformed STEP {step}: a relayed step needs params_digest")
            source = RelaySource.from_instruction(order.relay)
            self._relay_task = asyncio.get_running_loop().create_task(
                self._step_from_relay(step, source, expected, params))
            return
        got = await self._receive(msg, step, expected, params)
        if got != expected:  # never compute on parameters that are not the PS's: the step erases us instead
            log.error("step %d: the parameters received do not match the digest in STEP: step skipped", step)
            return
        await self._begin(step, expected, params)

    async def _receive(self, msg: Message, step: int, expected: bytes | None, params: np.ndarray) -> bytes | None:
        """The STEP's vector into ``params``, offered to the agents we relay to as it arrives (relay broadcast)."""
        if expected is None:
            return await msg.read_vector_into(params, digest=False)
        store = self.relay.store
        entry = store.begin(step, expected, params)
        got = None
        try:
            got = await msg.read_vector_into(params, progress=lambda nbytes: store.progress(entry, nbytes))
        finally:
            store.finish(entry, ok=got == expected)
        return got

    async def _step_from_relay(self, step: int, source: RelaySource, digest: bytes, params: np.ndarray) -> None:
        taker = self.adversary.takes("relayed_step")
        if taker is not None:
            await taker.relayed_step(self, step, source, digest, params)
            return
        await self.honest_relayed_step(step, source, digest, params)

    async def honest_relayed_step(self, step: int, source: RelaySource, digest: bytes, params: np.ndarray) -> None:
        """Take the parameters from ``source``; when that fails, tell the PS why (it sends them directly)."""
        started = time.monotonic()
        reason = await self.relay.receive(source, step, digest, params)
        if reason is None:
            await self._begin(step, digest, params)
            return
        log.warning("step %d: relay from worker %d (%s:%d) %s after %.2fs: asking the PS", step, source.worker,
                    source.host, source.port, reason, time.monotonic() - started)
        try:
            await self.conn.send(Kind.RELAY, RelayComplaint(step, reason).header())
        except ConnectionClosed:
            pass

    async def _cancel_relay(self) -> None:
        task, self._relay_task = self._relay_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _begin(self, step: int, digest: bytes | None, params: np.ndarray) -> None:
        """``params`` hold step ``step``'s parameters (checked against ``digest``): compute once the previous step's
        computation has stopped."""
        previous = self._work
        if previous is not None and previous.task is not None:
            await asyncio.gather(previous.task, return_exceptions=True)
        await self._sketches_done()
        work = _StepWork(step)
        work.task = asyncio.get_running_loop().create_task(self._compute(work, params))
        self._work = work

    async def _compute(self, work: _StepWork, params: np.ndarray) -> None:
        assert self.job is not None
        loop = asyncio.get_running_loop()
        for file in self.job.files:
            if work.cancelled:
                return
            if self._lazy is not None:  # synthetic: digested in the compute thread's scratch, regenerated on FETCH
                result = await loop.run_in_executor(self._executor, self._lazy.digest, params, work.step, file)
                digest = result.digest
            else:
                result, digest = await self._file_digest(work, params, file)
            if work.cancelled:
                return
            work.done.add(file)
            loss = result.loss if math.isfinite(result.loss) else None
            delay = self.adversary.digest_delay(work.step, file)
            if delay > 0:
                await asyncio.sleep(delay)
                if work.cancelled:
                    return
            try:
                await self.conn.send(Kind.DIGESTS, DigestReport(work.step, file, digest, loss,
                                                                result.seconds).header())
            except ConnectionClosed:
                return

    async def _file_digest(self, work: _StepWork, params: np.ndarray, file: int) -> tuple[Any, bytes]:
        """Compute ``file`` into its gradient buffer (then what a Byzantine agent commits to instead) and digest it."""
        assert self.job is not None
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._computed, params, work.step, file, self._grads[file], self.job.worker)

    def _computed(self, params: np.ndarray, step: int, file: int, out: np.ndarray, worker: int) -> tuple[Any, bytes]:
        """In the compute pool, in one task: the gradient, what a Byzantine agent commits to instead, its digest (a
        hop back to the event loop between them cost every step a wait for the loop, once per hop and file)."""
        result = self.computer.file_gradient(params, step, file, out)
        if self.adversary.commits:
            self.adversary.commit(out, step, file, worker, keep=self._sketched)
        return result, digest_bytes(out.data.cast("B"))

    async def _on_fetch(self, msg: Message) -> None:
        taker = self.adversary.takes("on_fetch")
        if taker is not None:
            await taker.on_fetch(self, msg)
            return
        await self.answer_fetch(msg)

    async def answer_fetch(self, msg: Message) -> None:
        """The honest answer to a FETCH: the payload of a file computed for the current step, or not_ready."""
        work, job = self._work, self.job
        try:
            request = parse_fetch_request(msg.header)
        except MessageError as exc:
            await self.conn.reply(msg, Kind.ERROR, ErrorReply("bad_fetch", str(exc)).header())
            return
        step, file = request.step, request.file
        if job is None or work is None or work.step != step or file not in work.done:
            await self.conn.reply(msg, Kind.ERROR,
                                  ErrorReply("not_ready", f"file {file} of step {step} is not computed here").header())
            return
        async with self.payload(work, file) as payload:
            if payload is None:  # a synthetic regeneration whose parameters were replaced meanwhile
                await self.conn.reply(msg, Kind.ERROR,
                                      ErrorReply("not_ready", f"file {file} of step {step} is gone here").header())
                return
            try:
                await self.conn.send_vector(Kind.VECTOR, VectorReply(step, file).header(), payload,
                                            codec=job.codec, level=job.codec_level, reply_to=msg)
            except ConnectionClosed as exc:  # the PS closed the link under the reply: the session ends, reconnects
                log.info("step %d: reply for file %d not sent: %s", step, file, exc)

    @property
    def work(self) -> _StepWork | None:
        """The current step's computation (its step and the files done so far), or None before the first."""
        return self._work

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background until it ends or the session does (a behaviour's delayed answer)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._spawned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("a background answer ended: %r", task.exception())

    @contextlib.asynccontextmanager
    async def payload(self, work: _StepWork, file: int) -> AsyncIterator[np.ndarray | None]:
        """The payload of computed ``file`` of ``work``'s step, valid until the block ends: the stored gradient, or
        a synthetic job's regenerated one (None when the step's parameters were replaced meanwhile: see
        :meth:`_still_holds`)."""
        if self._lazy is None:
            payload = self._grads[file]
            yield self.adversary.forge(payload) if self.adversary.forges else payload
            return
        async with self._lazy.payload(self._params[work.step % 2], work.step, file,
                                      lambda: self._still_holds(work)) as regenerated:
            yield regenerated

    def _still_holds(self, work: _StepWork) -> bool:
        """Whether ``self._params[work.step % 2]`` surely still holds ``work``'s parameters: ``work`` is current and
        no later STEP has arrived. Every STEP marks the current work cancelled before it writes into a parameter
        buffer (and ``self._work`` never returns to an older step), so while this holds nothing has started to
        overwrite the buffer; checked after a regeneration, it proves the regeneration read step t's parameters.
        (Conservative: after a STEP t+1 whose parameters were refused, step t's files are not_ready too.)"""
        return self._work is work and not work.cancelled


    def _on_sketch(self, msg: Message) -> None:
        """The step's revealed seed: sketch the named files we computed (one SKETCH each, as DIGESTS), in the
        background, so that a FETCH that follows (the PS fetches a split file's payloads while the blame sketches
        it asked for are computed) is served meanwhile instead of after them."""
        work, job = self._work, self.job
        if job is None:
            raise ComputeError("SKETCH before JOB")
        try:
            request = parse_sketch_request(msg.header, job.num_files)
        except SketchHeaderError as exc:
            raise ComputeError(f"malformed SKETCH from the PS: {exc}") from None
        if work is None or work.step != request.step:
            log.info("SKETCH for step %d, which is not ours now: ignored", request.step)
            return
        if not self.adversary.answers_sketch:
            return
        task = asyncio.get_running_loop().create_task(self._answer_sketch(work, request))
        self._sketching.add(task)

    async def _sketches_done(self) -> None:
        """Wait for the SKETCH answers being computed; one that failed ends the session, as it would have when
        answered in line."""
        tasks, self._sketching = self._sketching, set()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                raise outcome

    async def _answer_sketch(self, work: _StepWork, request: SketchRequest) -> None:
        loop = asyncio.get_running_loop()
        if self._lazy is not None:  # synthetic: regenerated one file at a time
            done = [f for f in request.files if f in work.done]
            found = await self._lazy.sketches(self._params[work.step % 2], request, done,
                                              lambda: self._still_holds(work))
        else:
            source = self._sketched if self.adversary.sketch_stage is not None else self._grads
            ready = {f: source[f] for f in request.files if f in work.done and f in source}
            found = await loop.run_in_executor(self._executor, sketch_answers, request, ready)
        for answer in found:
            try:
                await self.conn.send(Kind.SKETCH, answer.header())
            except ConnectionClosed:
                return
