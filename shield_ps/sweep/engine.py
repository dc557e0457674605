"""The in-process engine: one sweep run as the cluster would compute it, in one process, each file once.

With simulated attacks every agent is honest, so the r replicas of a file are bit-equal (one determinism class,
docs/compute.md) and the vote picks that value; the step of a ``shield-ps serve --local-agents K`` run is then

    f file gradients (the agents' :class:`~shield_model.compute.GradientComputer`) -> attack simulation and robust
    aggregation (the PS's own :class:`~shield_ps.phases.aggregate.Aggregation`) -> momentum SGD with the schedule
    (:class:`~shield_ps.optimizer.MomentumSGD`, :class:`~shield_ps.optimizer.Schedule`)

and this module runs exactly that, with the same code, the same order of operations and the same thread count,
so the final parameters are bit-identical to the cluster's (tests/test_sweep_engine.py compares them with a real
``serve`` run). It computes each file once instead of r times, with no sockets, processes or deadlines, which is
what makes a grid of b = 750 runs with several seeds affordable on a small machine. What it cannot tell is what the
wire and the deadlines cost: its step events carry no bytes, and its step times are compute and aggregation only.

It writes what ``serve`` writes (``metrics.jsonl`` with job, step, eval, checkpoint and summary events;
checkpoints in the same format, so a run continues from either engine's checkpoint with ``--resume``), and stops
on SIGTERM or SIGINT after the step in progress, saving the last completed step.

    python -m shield_ps.sweep.engine --config RUN/config.json [--resume] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from shield_ps.checkpoint import Checkpoint, load_latest, save_checkpoint
from shield_ps.config import ServeConfig, diff_training_fields
from shield_ps.errors import PS_ERRORS, CheckpointError, ConfigError
from shield_ps.events import EventSink
from shield_ps.job import JobPlan, resolve_job
from shield_ps.optimizer import MomentumSGD
from shield_ps.phases.accounting import StepAccount, Tally
from shield_ps.phases.buffers import StepBuffers
from shield_ps.phases.names import TOTAL, Phase

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
CONFIG_FILE = "config.json"
ENGINE = "inprocess"


class Stop(Exception):
    """A stop was asked for (SIGTERM/SIGINT): the step in progress is abandoned, the state is that of the last one."""


class InProcessRun:
    """One run of ``config`` (``config.train_dir`` is the run directory). ``device`` is where gradients are
    computed (cpu, cuda, cuda:N; as ``shield-agent join --device``)."""

    def __init__(self, config: ServeConfig, device: str = "cpu") -> None:
        from shield_model.compute import ComputeSpec, GradientComputer
        from shield_model.errors import ShieldModelError
        from shield_model.evaluation import Evaluator
        from shield_ps.phases.aggregate import Aggregation, ShortStep

        if config.synthetic_d is not None:
            raise ConfigError("the in-process engine trains real models; --synthetic-d is for the cluster's benches")
        if config.agg_threads is None:  # one core's worth unless asked; threads never change an aggregate
            config = config.replace(agg_threads=1)
        self.config = config
        self.plan: JobPlan = resolve_job(config)
        self.train_dir = Path(config.train_dir)
        data_dir = str(Path(config.data_dir or "~/.cache/shield/data").expanduser())
        f = self.plan.placement.f
        try:
            self.computer = GradientComputer(ComputeSpec(config.network, config.dataset, data_dir, config.seed,
                                                         self.plan.batch_size, f, config.threads, device))
            self.evaluator = Evaluator(config.network, config.dataset, data_dir, config.seed, threads=config.threads)
        except ShieldModelError as exc:
            raise ConfigError(str(exc)) from None
        self.buffers = StepBuffers(f, self.computer.num_params)
        self.aggregation = Aggregation(self.plan, self.buffers, ShortStep(config.short_step))
        self.tally = Tally()
        self.stop_requested = False

    # ---- state ------------------------------------------------------------------------------------------------
    def initial_state(self) -> tuple[int, MomentumSGD]:
        """Step 0, or the newest valid checkpoint with ``config.resume`` (refused if made with other settings)."""
        directory = self.train_dir / "checkpoints"
        checkpoint = load_latest(directory) if self.config.resume else None
        if checkpoint is None:
            return 0, MomentumSGD(self.computer.initial_parameters(), self.config.momentum)
        if checkpoint.config_hash != self.config.config_hash():
            changes = "; ".join(diff_training_fields(checkpoint.config, self.config))
            raise CheckpointError(f"checkpoint at step {checkpoint.step} was made with another configuration "
                                  f"({changes}); use another run directory or the same settings")
        if checkpoint.params.shape != (self.computer.num_params,):
            raise CheckpointError(f"checkpoint holds {checkpoint.params.size} parameters, the model has "
                                  f"{self.computer.num_params}")
        self.tally = Tally.from_json(checkpoint.extra.get("tally"))
        center = checkpoint.arrays.get("center")
        if center is not None and self.aggregation.center is not None:
            self.aggregation.center[:] = center
        log.info("resuming from step %d", checkpoint.step)
        return checkpoint.step, MomentumSGD(checkpoint.params, self.config.momentum, checkpoint.velocity)

    def checkpoint(self, optimizer: MomentumSGD, step: int) -> Checkpoint:
        """The state after ``step`` completed steps, as the daemon checkpoints it."""
        arrays = {} if self.aggregation.center is None else {"center": self.aggregation.center.copy()}
        return Checkpoint(step=step, params=optimizer.params.copy(), velocity=optimizer.velocity.copy(),
                          config=self.config.to_dict(), config_hash=self.config.config_hash(),
                          rng_state={"seed": self.config.seed}, extra={"tally": self.tally.to_json()},
                          arrays=arrays)

    # ---- the run ----------------------------------------------------------------------------------------------
    def run(self, sink: EventSink) -> str:
        """Train to the end (or until a stop); returns the summary's reason (``completed``, ``interrupted`` or
        ``failed: ...``)."""
        started = time.monotonic()
        start, optimizer = self.initial_state()
        total = self.plan.total_steps(self.computer.steps_per_epoch)
        self._emit_job(sink, total, start)
        last_saved: int | None = start if start > 0 else None
        done, best, final, reason = start, None, None, "completed"
        try:
            for step in range(start, total):
                self._step(sink, optimizer, step)
                done = step + 1
                if done % self.config.eval_freq == 0 or done == total:
                    final = self._evaluate_and_checkpoint(sink, optimizer, done)
                    best = final if best is None else max(best, final)
                    last_saved = done
        except Stop:
            reason = "interrupted"
        except PS_ERRORS as exc:
            reason = f"failed: {exc}"
            log.error("%s", exc)
        if reason != "completed" and last_saved != done:
            self._save(sink, optimizer, done)
        sink.emit("summary", steps=done, wall_s=round(time.monotonic() - started, 3), best_top1=best,
                  final_top1=final, reason=reason, refused=0, checkpoint_errors=[], last_checkpoint=done,
                  metrics_complete=sink.write_error is None, engine=ENGINE, **self.tally.summary_fields())
        return reason

    def _step(self, sink: EventSink, optimizer: MomentumSGD, step: int) -> None:
        """One step: as :class:`shield_ps.step.StepRunner` with every file won by its honest replicas."""
        plan = self.plan
        placement = plan.placement
        lr = plan.schedule.lr_at(step)
        mark = time.perf_counter()
        losses = np.empty(placement.f)
        for file in range(placement.f):
            if self.stop_requested:
                raise Stop()
            losses[file] = self.computer.file_gradient(optimizer.params, step, file, out=self.buffers.row(file)).loss
        compute = time.perf_counter() - mark
        byzantine = plan.byzantine.at(step) if plan.byzantine is not None else ()
        mark = time.perf_counter()
        result = self.aggregation.run(step, list(range(placement.f)), byzantine)
        aggregate = time.perf_counter() - mark
        mark = time.perf_counter()
        if result.gradient is not None:
            optimizer.step(result.gradient, lr)
            self.aggregation.commit()
        update = time.perf_counter() - mark
        account = StepAccount.build(lying=set(), outvoted=set(result.attack_outvoted), slow=set(), erased=set())
        excluded = set(byzantine) | set(account.outvoted)
        honest = [losses[file] for worker, files in enumerate(placement.worker_files) if worker not in excluded
                  for file in files]
        self.tally.add(account, files_corrupted=len(result.corrupted), files_dropped=0, action=result.action)
        sink.emit("step", epoch=step // max(1, self.computer.steps_per_epoch), refused=0, step=step, lr=lr,
                  loss=float(np.mean(honest)) if honest else None, files=placement.f, files_won=placement.f,
                  files_dropped=0, files_corrupted=len(result.corrupted),
                  aggregation={"action": result.action, "s": result.s, "reason": result.reason},
                  times={Phase.DIGEST_GATHER.value: compute, Phase.AGGREGATE.value: aggregate,
                         Phase.UPDATE.value: update, TOTAL: compute + aggregate + update},
                  engine=ENGINE, **account.fields())
        if result.gradient is None:
            log.warning("step %d: update skipped: %s", step, result.reason)

    def _evaluate_and_checkpoint(self, sink: EventSink, optimizer: MomentumSGD, step: int) -> float:
        self._save(sink, optimizer, step)
        result = self.evaluator.evaluate(optimizer.params.copy())
        sink.emit("eval", step=step, top1=result.top1, top5=result.top5, loss=result.loss)
        return result.top1

    def _save(self, sink: EventSink, optimizer: MomentumSGD, step: int) -> None:
        """Write the checkpoint of ``step`` now; a failure is reported (event and log), never silent."""
        try:
            path = save_checkpoint(self.train_dir / "checkpoints", self.checkpoint(optimizer, step),
                                   self.config.checkpoint_keep)
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.error("checkpoint at step %d was NOT written: %s", step, error)
            sink.emit("checkpoint", step=step, ok=False, error=error)
            raise CheckpointError(f"the checkpoint of step {step} was not written: {error}") from None
        sink.emit("checkpoint", step=step, ok=True, path=str(path))

    def _emit_job(self, sink: EventSink, total: int, start: int) -> None:
        c, p = self.config, self.plan.placement
        sink.emit("job", vote=c.vote.value, vote_tol=c.vote_tol, scheme=p.scheme.value, workers=p.K, files=p.f,
                  replication=p.r, files_per_worker=p.l, network=c.network, dataset=c.dataset,
                  batch_size=self.plan.batch_size, aggregator=self.plan.aggregator.value, attack=c.attack_name,
                  byzantine=c.byzantine, byzantine_gen=c.byzantine_gen.value, total_steps=total,
                  steps_per_epoch=self.computer.steps_per_epoch, start_step=start, seed=c.seed,
                  config_hash=c.config_hash(), resumed=start > 0, engine=ENGINE)


def write_config(config: ServeConfig, path: Path) -> Path:
    """Write ``config`` as JSON (what ``python -m shield_ps.sweep.engine --config`` reads), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config.to_dict(), sort_keys=True, indent=1))
    tmp.replace(path)
    return path


def read_config(path: Path) -> ServeConfig:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the run configuration {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a configuration object")
    return ServeConfig.from_dict(data)


def main(argv: list[str] | None = None) -> int:
    from shield_model.device import parse_device
    from shield_ps.flags import agg_threads

    parser = argparse.ArgumentParser(prog="python -m shield_ps.sweep.engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="the run's ServeConfig as JSON (train_dir is "
                        "the run directory)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    parser.add_argument("--device", type=parse_device, default="cpu", help="where gradients are computed")
    parser.add_argument("--agg-threads", type=agg_threads, metavar="N",
                        help="threads of the aggregation (default 1; never changes the result)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = read_config(args.config).replace(resume=args.resume)
        if args.agg_threads is not None:
            config = config.replace(agg_threads=args.agg_threads)
        engine = InProcessRun(config, args.device)
    except PS_ERRORS as exc:
        log.error("%s", exc)
        return 2

    def stop(signum: int, _frame: Any) -> None:
        log.warning("signal %d: stopping after the step in progress", signum)
        engine.stop_requested = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    sink = EventSink(engine.train_dir / METRICS)
    try:
        reason = engine.run(sink)
    except PS_ERRORS as exc:  # a checkpoint that cannot be resumed from: nothing was run
        log.error("%s", exc)
        return 2
    finally:
        sink.close()
    log.info("run ended: %s", reason)
    return 0 if reason == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
