"""Run a sweep: each feasible grid point in a subprocess, one after another, skipping runs that already completed and
resuming interrupted ones from their checkpoint. Two engines (:class:`Engine`):

* ``cluster``: a real local cluster, ``shield-ps serve --local-agents K`` (the system itself: TCP, agents, votes,
  deadlines; the table's seconds and bytes per step are measured);
* ``inprocess``: ``python -m shield_ps.sweep.engine``, the same mathematics in one process with each file computed
  once (:mod:`shield_ps.sweep.engine`; bit-identical final parameters, proven by tests/test_sweep_engine.py), for
  grids too large to run as clusters. Both write the same ``metrics.jsonl`` and checkpoints.

Layout of the output directory: ``runs/<run name>/`` (the run's ``metrics.jsonl``, checkpoints, agent logs and the
run's log, ``serve.log`` or ``engine.log``), ``results.csv``, ``results.md``, ``points.md`` and the figures.
"""
from __future__ import annotations

import enum
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shield_ps.errors import SweepError
from shield_ps.events import read_events
from shield_ps.sweep.grid import Grid, RunSpec
from shield_ps.sweep.results import COMPLETED, RunRow, summarize

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
POLL_S = 0.5
STOP_GRACE_S = 30.0


class Engine(str, enum.Enum):
    """How a sweep runs its points; values are the CLI names."""

    CLUSTER = "cluster"
    INPROCESS = "inprocess"


#: The log each engine's process writes into its run directory.
RUN_LOGS = {Engine.CLUSTER: "serve.log", Engine.INPROCESS: "engine.log"}


@dataclass
class Progress:
    """What a progress view shows: the grid's counts, the current run and its step, and the grid's ETA."""

    total: int
    done: int = 0
    skipped: int = 0
    current: str = ""
    step: int = 0
    steps: int = 0
    eta_s: float | None = None
    finished: list[RunRow] = field(default_factory=list)


def run_status(run_dir: Path) -> str | None:
    """``completed``, the reason of an unfinished run's last summary (or ``started``), or None when never run."""
    path = run_dir / METRICS
    if not path.is_file() or not path.stat().st_size:
        return None
    reason = "started"
    for event in read_events(path):
        if isinstance(event, dict) and event.get("kind") == "summary":
            reason = str(event.get("reason", "started"))
    return reason


class MetricsTail:
    """Reads the complete lines appended to a ``metrics.jsonl`` since the last call (the run is still writing)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.last_step = path, 0, -1

    def poll(self) -> int:
        """The highest completed step seen so far (-1 before the first)."""
        import json

        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return self.last_step
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("kind") == "step" and isinstance(event.get("step"), int):
                self.last_step = max(self.last_step, event["step"])
        return self.last_step


@dataclass
class SweepRunner:
    """Runs the grid's points in order into ``out``; ``on_progress`` is called on every change (the view)."""

    grid: Grid
    out: Path
    data_dir: str | None = None
    run_timeout_s: float = 3600.0
    join_timeout_s: float = 900.0
    gather_timeout_s: float = 600.0
    on_progress: Callable[[Progress], None] = lambda progress: None
    engine: Engine = Engine.CLUSTER
    device: str = "cpu"
    agg_threads: int | None = None

    def run_dir(self, spec: RunSpec) -> Path:
        return self.out / "runs" / spec.name

    def serve_command(self, spec: RunSpec, resume: bool) -> list[str]:
        """The subprocess command of one run (the same interpreter; ``PYTHONPATH`` is inherited)."""
        if self.engine is Engine.INPROCESS:
            return self.engine_command(spec, resume)
        cmd = [sys.executable, "-m", "shield_ps.cli", "serve", *spec.serve_args(),
               "--local-agents", str(self.grid.workers), "--port", "0", "--quiet",
               "--join-timeout", repr(self.join_timeout_s), "--gather-timeout", repr(self.gather_timeout_s),
               "--train-dir", str(self.run_dir(spec))]
        if self.data_dir:
            cmd += ["--data-dir", self.data_dir]
        if self.device != "cpu":
            cmd += ["--agent-device", self.device]
        if self.agg_threads is not None:
            cmd += ["--agg-threads", str(self.agg_threads)]
        return cmd + (["--resume"] if resume else [])

    def engine_command(self, spec: RunSpec, resume: bool) -> list[str]:
        """The in-process engine's command; it reads the run's configuration from ``RUN/config.json``."""
        cmd = [sys.executable, "-m", "shield_ps.sweep.engine", "--config", str(self.run_dir(spec) / "config.json")]
        if self.device != "cpu":
            cmd += ["--device", self.device]
        if self.agg_threads is not None:
            cmd += ["--agg-threads", str(self.agg_threads)]
        return cmd + (["--resume"] if resume else [])

    def run(self) -> list[RunRow]:
        """Run every pending point; returns one row per grid point (infeasible and failed ones included)."""
        specs = self.grid.runs()
        reasons = {spec.name: spec.infeasible() for spec in specs}
        pending = [s for s in specs if reasons[s.name] is None and run_status(self.run_dir(s)) != COMPLETED]
        progress = Progress(total=len(specs), skipped=len(specs) - len(pending))
        started, work_done = time.monotonic(), 0.0
        for index, spec in enumerate(pending):
            progress.current, progress.step, progress.steps = spec.name, 0, self.grid.max_steps
            self.on_progress(progress)
            self._execute(spec, progress, functools.partial(self._report_fraction, progress, started, work_done,
                                                            len(pending)))
            work_done = index + 1.0
            progress.done = index + 1
            self._eta(progress, started, work_done, len(pending))
        progress.current = ""
        self.on_progress(progress)
        return self.rows(reasons)

    def _report_fraction(self, progress: Progress, started: float, work_done: float, work_total: int,
                         fraction: float) -> None:
        """The ETA once ``fraction`` of the current run is done after ``work_done`` whole runs."""
        self._eta(progress, started, work_done + fraction, work_total)

    def _eta(self, progress: Progress, started: float, work_done: float, work_total: int) -> None:
        elapsed = time.monotonic() - started
        progress.eta_s = elapsed / work_done * (work_total - work_done) if work_done > 0.02 else None
        self.on_progress(progress)

    def _execute(self, spec: RunSpec, progress: Progress, report: Callable[[float], None]) -> None:
        run_dir = self.run_dir(spec)
        run_dir.mkdir(parents=True, exist_ok=True)
        resume = run_status(run_dir) is not None
        tail = MetricsTail(run_dir / METRICS)
        if self.engine is Engine.INPROCESS:
            from shield_ps.sweep.engine import write_config

            write_config(spec.config(train_dir=str(run_dir), data_dir=self.data_dir), run_dir / "config.json")
        with (run_dir / RUN_LOGS[self.engine]).open("ab") as log_file:
            proc = subprocess.Popen(self.serve_command(spec, resume), stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self.run_env())
            try:
                self._watch(proc, tail, progress, report)
            except BaseException:
                self._stop(proc)
                raise

    def run_env(self) -> dict[str, str] | None:
        """The run's environment: the in-process engine's numpy BLAS on one thread unless the caller chose. Its only
        BLAS call is the attack statistics' small matrix-vector product, where more OpenBLAS threads busy-wait (12x
        the CPU time of one thread at f = 25, d = 11.2M on a loaded 2-core machine) and change nothing (the product
        is split over its outputs, so the sums are the same)."""
        if self.engine is not Engine.INPROCESS:
            return None
        return {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}

    def _watch(self, proc: subprocess.Popen[bytes], tail: MetricsTail, progress: Progress,
               report: Callable[[float], None]) -> None:
        deadline = time.monotonic() + self.run_timeout_s
        while proc.poll() is None:
            if time.monotonic() > deadline:
                log.warning("run %s exceeded --run-timeout %.0f s; stopping it", progress.current,
                            self.run_timeout_s)
                self._stop(proc)
                return
            step = tail.poll()
            if step + 1 != progress.step:
                progress.step = step + 1
                report(progress.step / max(1, progress.steps))
            time.sleep(POLL_S)
        tail.poll()

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the serve process (it stops its agents and keeps its checkpoints), then SIGKILL after a grace."""
        if proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_GRACE_S)

    def rows(self, reasons: dict[str, str | None] | None = None) -> list[RunRow]:
        """The current row of every grid point, from what is on disk."""
        rows = []
        for spec in self.grid.runs():
            reason = reasons.get(spec.name) if reasons is not None else spec.infeasible()
            run_dir = self.run_dir(spec)
            if reason is not None:
                rows.append(RunRow(spec.name, spec.scheme.value, spec.aggregator.value, spec.attack, spec.q,
                                   spec.seed, f"infeasible: {reason}"))
                continue
            status = run_status(run_dir)
            events: list[dict[str, Any]] = [] if status is None else [
                e for e in read_events(run_dir / METRICS) if isinstance(e, dict)]
            rows.append(summarize(spec, events, self._status_text(status, run_dir)))
        return rows

    @staticmethod
    def _status_text(status: str | None, run_dir: Path) -> str:
        if status is None:
            return "pending"
        if status == COMPLETED:
            return COMPLETED
        last, name = "", ""
        for name in RUN_LOGS.values():
            log_path = run_dir / name
            if log_path.is_file():
                lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
                last = lines[-1].strip() if lines else ""
                break
        status = status if status.startswith("failed") else f"failed: {status}"
        return status + (f" ({name}: {last})" if last else "")


def check_output_dir(out: Path) -> Path:
    """The sweep's directory, created; SweepError when it is a file or cannot be created."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SweepError(f"cannot create the sweep directory {out}: {exc.strerror}") from None
    if not os.access(out, os.W_OK):
        raise SweepError(f"the sweep directory {out} is not writable")
    return out
