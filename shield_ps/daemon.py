"""The PS daemon: accept agents and observers, run the steps, evaluate and checkpoint off the step loop.

Lifecycle: resolve the job (fails fast on bad configuration) -> listen (a port in use fails before any heavy work)
-> start local agents (they import torch and load data while we do) -> load the model and the initial or resumed
state -> wait for agents (the deadline counts from the last progress) -> steps -> final evaluation and checkpoint
-> LEAVE to every agent -> close.
A misbehaving agent is disconnected with an ERROR frame saying why; it never takes the PS down.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from shield_ps import plugins
from shield_ps.checkpoint import Checkpoint, CheckpointLedger, load_latest
from shield_ps.classes import FingerprintError, FleetClasses
from shield_ps.config import ServeConfig, diff_training_fields
from shield_ps.data import locate_data
from shield_ps.errors import CheckpointError, ConfigError, TrainingError
from shield_ps.events import EventSink
from shield_ps.job import JobPlan, resolve_job
from shield_ps.local_agents import LocalAgents, default_processes, parse_agent_env, split_slots, write_token_file
from shield_ps.observers import ObserverHub
from shield_ps.optimizer import MomentumSGD
from shield_ps.phases.accounting import Tally
from shield_ps.pool import AgentLink, WorkerPool
from shield_ps.reference import ProbeGradients
from shield_ps.step import StepOutcome, StepRunner
from wire import Connection, ConnectionClosed, Kind, Limits, RemoteError, Role, Timeouts, WireError, serve
from wire.errors import MessageError
from wire.job import FINGERPRINT_FIELDS, parse_job_accept
from wire.messages import Leave, parse_leave

log = logging.getLogger(__name__)

#: While agents are still loading, the join wait goes on up to this many times --join-timeout.
JOIN_CAP_FACTOR = 5


class ModelState:
    """The PS's copy of the model: initial parameters, steps per epoch, and an evaluator (torch, lazily)."""

    def __init__(self, plan: JobPlan) -> None:
        c = plan.config
        self.evaluator: Any = None
        self.probe: ProbeGradients | None = None  # the PS's own probe (shield_ps.reference)
        self.train_samples: int | None = None  # told to agents in JOB, so one reading other data says so
        if c.synthetic_d is not None:  # benchmarks and tests: a flat vector, no dataset, no evaluation
            from shield_model.synthetic import SyntheticComputer

            synthetic = SyntheticComputer(c.synthetic_d, c.seed, 0.0)
            self.initial = synthetic.initial_parameters()
            self.steps_per_epoch = synthetic.steps_per_epoch
            self.probe = ProbeGradients.compute(synthetic, plan.placement.f)
            return
        from shield_model.compute import ComputeSpec, GradientComputer
        from shield_model.errors import ShieldModelError
        from shield_model.evaluation import Evaluator

        data_dir = str(locate_data(c.dataset, c.data_dir, download=True).path)
        spec = ComputeSpec(c.network, c.dataset, data_dir, c.seed, plan.batch_size, plan.placement.f, c.threads)
        try:
            computer = GradientComputer(spec)
        except ShieldModelError as exc:
            raise ConfigError(str(exc)) from None
        self.initial = computer.initial_parameters()
        self.steps_per_epoch = computer.steps_per_epoch
        self.probe = ProbeGradients.compute(computer, plan.placement.f)
        self.train_samples = computer.train_samples
        self.evaluator = Evaluator(c.network, c.dataset, data_dir, c.seed, threads=c.threads)


class PSDaemon:
    """One training run. ``on_listening(host, port)`` is called once the port is bound."""

    def __init__(self, config: ServeConfig, token: str, sink: EventSink,
                 on_listening: Callable[[str, int], None] | None = None, token_file: Path | None = None) -> None:
        self.config = config
        self.token = token
        self.token_file = token_file  # what local agents read the token from
        self.sink = sink
        self.on_listening = on_listening
        self.plan = resolve_job(config)
        self.train_dir = Path(config.train_dir)
        self._eval_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shield-eval")
        self._ckpt_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shield-ckpt")
        self._pending: list[concurrent.futures.Future[Any]] = []
        self.pool: WorkerPool | None = None
        self.runner: StepRunner | None = None
        self.observers = ObserverHub(sink)
        self.best_top1: float | None = None
        self.final_top1: float | None = None
        self.tally = Tally()
        self.server: Any = None
        self.checkpoints = CheckpointLedger(sink)
        self._skipped_in_a_row = 0
        self.fetch_secret: bytes | None = None  # the fetch-order secret (default: fresh random bytes per run)
        self._model_ready = asyncio.Event()
        self._data_fields: dict[str, Any] = {}  # JOB fields describing the PS's dataset (once the model is ready)
        self.fleet: FleetClasses | None = None  # determinism classes (once the model is ready)
        self.resumed_from: int | None = None  # the step of the checkpoint this run started from (None: from scratch)

    async def run(self) -> int:
        """Run to the end; returns the process exit status (0 completed, 1 failed or not safely checkpointed)."""
        loop = asyncio.get_running_loop()
        self.pool = WorkerPool(self.plan.placement.worker_files, self.sink.emit)
        server = self.server = await self._listen()
        agents = self._start_local_agents(server.port)
        try:
            model = await loop.run_in_executor(None, ModelState, self.plan)
            start_step, optimizer = self._initial_state(model)
        except BaseException:
            await server.close()
            if agents is not None:
                await loop.run_in_executor(None, agents.stop)
            raise
        total_steps = self.plan.total_steps(model.steps_per_epoch)
        self.runner = StepRunner(self.plan, self.pool, optimizer, self._drop_agent, secret=self.fetch_secret)
        self.fleet = FleetClasses(self.config.vote, self.runner.d, self.config.vote_tol, self.sink.emit,
                                  self.runner.set_tolerance, quorum=self.plan.attestation_quorum)
        if model.probe is not None:
            self.fleet.reference = await loop.run_in_executor(None, model.probe.reference, self.fleet.probe_seed)
            model.probe = None
        if model.train_samples is not None:
            self._data_fields = {"train_samples": model.train_samples}
        if self._resumed_center is not None and self.runner.aggregation.center is not None:
            self.runner.aggregation.center[:] = self._resumed_center
        self._model_ready.set()
        started, reason, step = time.monotonic(), "completed", start_step
        self.runner.completed_steps = start_step
        try:
            self._emit_job(total_steps, model.steps_per_epoch, start_step)
            ready = await self.pool.wait_ready(self.plan.placement.K, self.config.join_timeout,
                                               cap=self.config.join_timeout * JOIN_CAP_FACTOR)
            if ready == 0:
                raise TrainingError(self.pool.join_failure())
            if ready < self.plan.placement.K:
                log.warning("starting with %d of K=%d agents (the missing ones are erasures)",
                            ready, self.plan.placement.K)
            await self._exclude(self.fleet.check_start())
            for step in range(start_step, total_steps):
                outcome = await self.runner.run(step)
                self._record(outcome, model.steps_per_epoch)
                done = step + 1
                if done % self.config.eval_freq == 0 and done < total_steps:
                    self._evaluate_and_checkpoint(model, optimizer, done)
            step = total_steps
            self._evaluate_and_checkpoint(model, optimizer, total_steps)
        except TrainingError as exc:
            reason = f"failed: {exc}"
            log.error("%s", exc)
        except asyncio.CancelledError:
            reason = "interrupted"
            raise
        finally:
            reason = await self._finish(server, agents, reason, model, optimizer, time.monotonic() - started)
        return 0 if reason == "completed" else 1

    def _initial_state(self, model: ModelState) -> tuple[int, MomentumSGD]:
        checkpoint = load_latest(self.train_dir / "checkpoints") if self.config.resume else None
        if self.config.resume and checkpoint is None:
            log.warning("--resume: no valid checkpoint in %s; starting from step 0", self.train_dir)
        self._resumed_center = None
        if checkpoint is None:
            return 0, MomentumSGD(model.initial, self.config.momentum)
        if checkpoint.config_hash != self.config.config_hash():
            changes = "; ".join(diff_training_fields(checkpoint.config, self.config))
            raise CheckpointError(f"checkpoint at step {checkpoint.step} was made with another configuration "
                                  f"({changes}); use another --train-dir or the same flags")
        if checkpoint.params.shape != model.initial.shape:
            raise CheckpointError(f"checkpoint holds {checkpoint.params.size} parameters, the model has "
                                  f"{model.initial.size}")
        total_steps = self.plan.total_steps(model.steps_per_epoch)
        if checkpoint.step > total_steps:
            raise CheckpointError(f"checkpoint at step {checkpoint.step} is past the end of this job ({total_steps} "
                                  "steps): it belongs to a longer run; use another --train-dir, or the same length")
        self.resumed_from = checkpoint.step
        log.info("resuming from step %d", checkpoint.step)
        self.tally = Tally.from_json(checkpoint.extra.get("tally"))
        self._resumed_center = checkpoint.arrays.get("center")
        self.checkpoints.last_step = checkpoint.step
        return checkpoint.step, MomentumSGD(checkpoint.params, self.config.momentum, checkpoint.velocity)

    async def _listen(self) -> Any:
        """Bind the port (before any heavy work, so a port in use fails in a second, with advice)."""
        c = self.config
        limits = Limits(max_preauth=c.max_preauth, max_preauth_per_host=c.max_preauth_per_host)
        timeouts = Timeouts(handshake=c.handshake_timeout)
        try:
            server = await serve(c.host, c.port, self._on_connection, token=self.token,
                                 admit=self.pool.admit if self.pool else None, limits=limits, timeouts=timeouts)
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {self.config.port} is in use on {self.config.host}: pass --port 0 to pick "
                                  "a free port, or another --port") from None
            raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        if self.on_listening:
            self.on_listening(server.host, server.port)
        return server

    def _start_local_agents(self, port: int) -> LocalAgents | None:
        if not self.config.local_agents:
            return None
        if self.token_file is None:
            self.token_file = write_token_file(self.train_dir / "token", self.token)
        extra = ["--synthetic", "0"] if self.config.synthetic_d is not None else plugins.agent_args(self.config)
        if self.config.local_agent_device != "cpu":
            extra += ["--device", self.config.local_agent_device]
        agents = LocalAgents(self.config.local_agents, self.config.host, port, self.token_file,
                             self.train_dir / "agents", self.config.data_dir,
                             extra, processes=self.config.agent_processes,
                             envs=parse_agent_env(self.config.local_agent_env,
                                                  len(split_slots(self.config.local_agents,
                                                                  self.config.agent_processes
                                                                  or default_processes(self.config.local_agents)))))
        agents.start()
        return agents

    def _emit_job(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        c, p = self.config, self.plan.placement
        self.sink.emit("job", vote=c.vote.value, vote_tol=c.vote_tol, scheme=p.scheme.value, workers=p.K, files=p.f,
                       replication=p.r, files_per_worker=p.l,
                       network=c.network, dataset=c.dataset, batch_size=self.plan.batch_size,
                       aggregator=self.plan.aggregator.value, attack=c.attack_name, byzantine=c.byzantine,
                       byzantine_gen=c.byzantine_gen.value, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                       start_step=start_step, seed=c.seed, config_hash=c.config_hash(), resumed=start_step > 0)

    def _record(self, outcome: StepOutcome, steps_per_epoch: int) -> None:
        action = outcome.aggregation["action"]
        self.tally.add(outcome.account, files_corrupted=outcome.files_corrupted,
                       files_dropped=outcome.files_dropped, action=action)
        refused = self.server.refused_total if self.server is not None else 0
        self.sink.emit("step", epoch=outcome.step // max(1, steps_per_epoch), refused=refused,
                       **outcome.event_fields())
        self._skipped_in_a_row = self._skipped_in_a_row + 1 if action == "skip" else 0
        if self._skipped_in_a_row >= self.config.max_skipped_steps:
            raise TrainingError(f"{self._skipped_in_a_row} steps in a row could not be aggregated "
                                f"(--max-skipped-steps {self.config.max_skipped_steps}); the last: "
                                f"{outcome.aggregation['reason']}")

    def _checkpoint(self, optimizer: MomentumSGD, step: int) -> Checkpoint:
        """A snapshot of the state after ``step`` completed steps (copies: the step loop goes on)."""
        arrays = {}
        if self.runner is not None and self.runner.aggregation.center is not None:
            arrays["center"] = self.runner.aggregation.center.copy()
        return Checkpoint(step=step, params=optimizer.params.copy(), velocity=optimizer.velocity.copy(),
                          config=self.config.to_dict(), config_hash=self.config.config_hash(),
                          rng_state={"seed": self.config.seed}, extra={"tally": self.tally.to_json()},
                          arrays=arrays)

    def _evaluate_and_checkpoint(self, model: ModelState, optimizer: MomentumSGD, step: int) -> None:
        """Snapshot the state now; write the checkpoint and evaluate in background threads."""
        checkpoint = self._checkpoint(optimizer, step)
        self._pending.append(self.checkpoints.submit(self._ckpt_pool, self.train_dir / "checkpoints", checkpoint,
                                                     self.config.checkpoint_keep))
        if model.evaluator is None:
            return
        loop = asyncio.get_running_loop()
        future = self._eval_pool.submit(model.evaluator.evaluate, checkpoint.params)
        future.add_done_callback(lambda fut: loop.call_soon_threadsafe(self._emit_eval, step, fut))
        self._pending.append(future)

    def _emit_eval(self, step: int, future: concurrent.futures.Future[Any]) -> None:
        try:
            result = future.result()
        except Exception:
            log.exception("evaluation at step %d failed", step)
            return
        self.final_top1 = result.top1
        self.best_top1 = max(self.best_top1 or 0.0, result.top1)
        self.sink.emit("eval", step=step, top1=result.top1, top5=result.top5, loss=result.loss)

    async def _finish(self, server: Any, agents: LocalAgents | None, reason: str, model: ModelState,
                      optimizer: MomentumSGD, wall: float) -> str:
        """Settle the state, save it if the run did not complete, end the agents; returns the final reason."""
        loop = asyncio.get_running_loop()
        if self.runner is not None:
            await self.runner.close()
        await asyncio.gather(*(asyncio.wrap_future(f) for f in self._pending), return_exceptions=True)
        await asyncio.sleep(0)  # let the last eval and checkpoint callbacks run
        steps = self.runner.completed_steps if self.runner is not None else None
        if reason != "completed" and steps is not None and steps != self.checkpoints.last_step:
            log.warning("saving the last good state (after %d steps) before exiting", steps)
            await asyncio.wrap_future(self.checkpoints.submit(
                self._ckpt_pool, self.train_dir / "checkpoints", self._checkpoint(optimizer, steps),
                self.config.checkpoint_keep))
            await asyncio.sleep(0)
        if reason == "completed" and self.checkpoints.final_error(steps) is not None:
            reason = f"failed: the final checkpoint was not written: {self.checkpoints.final_error(steps)}"
            log.error("%s", reason)
        assert self.pool is not None
        if self.fleet is not None:
            self.fleet.ended = True
        for link in self.pool.connected():
            try:
                await asyncio.wait_for(link.conn.send(Kind.LEAVE, Leave(reason).header()), 5.0)
            except (WireError, ConnectionClosed, asyncio.TimeoutError):
                pass
        trained = None if steps is None else steps - (self.resumed_from or 0)
        self.sink.emit("summary", steps=steps, steps_trained=trained, resumed_from=self.resumed_from,
                       wall_s=round(wall, 3), best_top1=self.best_top1,
                       final_top1=self.final_top1, reason=reason, refused=server.refused_total,
                       checkpoint_errors=self.checkpoints.errors, last_checkpoint=self.checkpoints.last_step,
                       metrics_complete=self.sink.write_error is None, **self.tally.summary_fields())
        await self.observers.close()
        await server.close()
        if agents is not None:
            await loop.run_in_executor(None, agents.stop)
        self._eval_pool.shutdown(wait=True)
        self._ckpt_pool.shutdown(wait=True)
        return reason

    async def _exclude(self, excluded: dict[int, str]) -> None:
        """Close the agents that the fleet's classes exclude at start (``--vote exact``: not the majority class)."""
        assert self.pool is not None
        for worker, why in excluded.items():
            link = self.pool.link(worker)
            if link is not None:
                log.warning("worker %d (%s) excluded: %s", worker, link.name, why)
                await link.conn.close(why, code="class")

    def _drop_agent(self, link: AgentLink, why: str) -> None:
        log.warning("dropping worker %d (%s): %s", link.worker, link.name, why)
        asyncio.get_running_loop().create_task(link.conn.close(why, code="protocol"))

    async def _on_connection(self, conn: Connection) -> None:
        if conn.known_peer.role == Role.OBSERVER.value:
            await self.observers.serve(conn)
            return
        assert self.pool is not None
        link = self.pool.bind(conn)
        left: str | None = None
        try:
            await self._model_ready.wait()  # agents may join while the PS still loads the model
            if not await self._join(conn, link):
                return
            self.pool.set_ready(link)
            left = await self._serve_agent(conn, link)
        except RemoteError as exc:  # the agent answered JOB with its own error (another plug-in, no data): say why
            log.warning("worker %d could not take the job: %s", link.worker, exc.reason)
        except WireError as exc:
            log.info("worker %d: %s", link.worker, exc)
        finally:
            if self.fleet is not None:
                self.fleet.leave(link.worker)
            self.pool.release(link, left)
            if self.runner is not None:
                self.runner.on_agent_lost(link)


    async def _join(self, conn: Connection, link: AgentLink) -> bool:
        """JOB: offer ``link`` its job and check the agent's acceptance; False when the agent was refused (its
        connection is closed, with a code saying why)."""
        assert self.runner is not None
        assert self.fleet is not None
        offer = replace(self.plan.job_offer(link.worker), probe=self.fleet.probe(), **self._data_fields)
        reply = await conn.request(Kind.JOB, offer.header(), timeout=self.config.join_timeout)
        if reply.kind is not Kind.JOB:
            reply.discard()
            await conn.close(f"the agent answered JOB with {reply.kind.value}", code="job")
            return False
        try:
            accept = parse_job_accept(reply.header)
        except MessageError as exc:
            code = bad_reply_code(exc)
            await conn.close(f"bad {'fingerprint' if code == 'fingerprint' else 'JOB reply'}: {exc}", code=code)
            return False
        other_model = plugins.refusal(self.config, accept)
        if other_model is not None:  # another plug-in model: final (the agent must be fixed, not retried)
            log.warning("worker %d refused: %s", link.worker, other_model)
            await conn.close(other_model, code="job")
            return False
        if accept.num_params != self.runner.d:
            await conn.close(f"agent has {accept.num_params} parameters, the PS {self.runner.d}", code="job")
            return False
        try:
            refused = self.fleet.admit(link.worker, accept.fingerprint)
        except FingerprintError as exc:
            await conn.close(f"bad fingerprint: {exc}", code="fingerprint")
            return False
        if refused is not None:
            log.warning("worker %d refused: %s", link.worker, refused)
            await conn.close(refused, code="class")
            return False
        link.extra["class"] = self.fleet.class_of(link.worker)
        link.relay = relay_address(link.address, accept.relay_port, accept.relay_id)
        return True

    async def _serve_agent(self, conn: Connection, link: AgentLink) -> str | None:
        """An admitted agent's messages, until it leaves (the reason its LEAVE gives) or breaks the protocol (None).
        Each phase parses its own kind (:mod:`wire.messages`, :mod:`wire.sketch`)."""
        assert self.runner is not None
        async for msg in conn:
            match msg.kind:
                case Kind.DIGESTS:
                    self.runner.on_digest(link, msg.header)
                case Kind.SKETCH:
                    self.runner.on_sketch(link, msg.header)
                case Kind.RELAY:
                    self.runner.on_relay(link, msg.header)
                case Kind.LEAVE:
                    return leave_reason(msg.header)
                case _:
                    msg.discard()
                    self._drop_agent(link, f"unexpected {msg.kind.value}")
                    return None
        return None


def bad_reply_code(exc: MessageError) -> str:
    """The close code for a malformed JOB reply: ``fingerprint`` for a bad fingerprint field, ``job`` otherwise."""
    return "fingerprint" if exc.field in FINGERPRINT_FIELDS else "job"


def relay_address(address: str | None, port: Any, process: Any) -> tuple[str, int, bytes] | None:
    """Where an agent's process serves relays: the host its connection comes from, the port its JOB reply gives, and
    the process's random id from the same reply (slots with equal triples share one copy of the parameters; an agent
    that names another process's port without its id is a process of its own). Untrusted: None unless a port in
    1..65535 and a 16-byte id."""
    if (address is None or isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
            or not isinstance(process, bytes) or len(process) != 16):
        return None
    return address.rsplit(":", 1)[0], port, process


def leave_reason(header: dict[str, Any]) -> str:
    """The reason an agent's LEAVE gives (untrusted: printable text, at most 64 characters; ``left`` otherwise)."""
    try:
        reason = parse_leave(header).reason
    except MessageError:
        return "left"
    return reason if 0 < len(reason) <= 64 and reason.isprintable() else "left"


def new_token() -> str:
    return secrets.token_hex(32)
