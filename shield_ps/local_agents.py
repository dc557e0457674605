"""``--local-agents K``: spawn ``shield-agent join --workers N`` subprocesses on this machine hosting K worker slots
in all, and tear them down on exit.

The K slots are spread over P processes (``--agent-processes P``; default one per core but one, which the PS keeps
busy, at least 1 and at most K), so torch is imported and the dataset loaded P times instead of K times. Each
process computes its slots' files on up to one thread per core, so P = 1 still uses every core for gradients.
Process ``NN`` logs to ``RUN/agents/agent-NN.log``. A slot whose connection the PS cuts (a missed deadline,
docs/liveness.md) reconnects; every slot leaves when the PS ends the run (LEAVE). On Linux the processes also receive
SIGTERM when the PS process dies (``PR_SET_PDEATHSIG``), so they never outlive it; elsewhere they are started with
``--no-reconnect`` and exit when the PS goes away.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class LocalAgents:
    """K agent subprocesses joined to ``host:port``; :meth:`stop` is idempotent."""

    def __init__(self, count: int, host: str, port: int, token_file: Path, log_dir: Path,
                 data_dir: str | None, extra_args: Sequence[str] = (), processes: int | None = None,
                 envs: Mapping[int, Mapping[str, str]] | None = None) -> None:
        self.count = count
        self.slots = split_slots(count, processes or default_processes(count))
        self._envs = dict(envs or {})  # agent process index -> extra environment (e.g. other kernel settings)
        self._args = (host, port, token_file, data_dir, list(extra_args))
        self._log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        host, port, token_file, data_dir, extra = self._args
        self._log_dir.mkdir(parents=True, exist_ok=True)
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        for index, workers in enumerate(self.slots):
            cmd = [sys.executable, "-m", "shield_agent.cli", "-v", "join", f"{connect_host}:{port}",
                   "--token-file", str(token_file), "--name", f"local-{index:02d}", "--workers", str(workers),
                   *extra]
            if not sys.platform.startswith("linux"):
                cmd.append("--no-reconnect")
            if data_dir:
                cmd += ["--data-dir", str(data_dir)]
            log_path = self._log_dir / f"agent-{index:02d}.log"
            with open(log_path, "ab") as log_file:
                preexec = _die_with_parent if sys.platform.startswith("linux") else None
                env = {**os.environ, **self._envs[index]} if index in self._envs else None
                self.processes.append(subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                                       stdin=subprocess.DEVNULL, preexec_fn=preexec, env=env))
        log.info("started %d local worker slots in %d processes (logs in %s)", self.count, len(self.slots),
                 self._log_dir)

    def alive(self) -> int:
        return sum(p.poll() is None for p in self.processes)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every agent, wait up to ``grace`` seconds, then SIGKILL the rest."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()


def parse_agent_env(specs: Sequence[str], count: int) -> dict[int, dict[str, str]]:
    """``--local-agent-env "0,2:NAME=VALUE"`` (repeatable) -> {agent process index: {NAME: VALUE}}; ValueError
    saying what is allowed (indices in 0..count-1 for ``count`` agent processes, a variable name of letters, digits
    and underscores)."""
    envs: dict[int, dict[str, str]] = {}
    for spec in specs:
        head, sep, assignment = spec.partition(":")
        name, eq, value = assignment.partition("=")
        if not sep or not eq or not name or not (name.replace("_", "").isalnum() and not name[0].isdigit()):
            raise ValueError(f"--local-agent-env {spec!r}: expected INDICES:NAME=VALUE, "
                             "e.g. 0,2:ATEN_CPU_CAPABILITY=avx2")
        try:
            indices = [int(part) for part in head.split(",")]
        except ValueError:
            raise ValueError(f"--local-agent-env {spec!r}: indices must be integers like 0,2") from None
        if any(not 0 <= i < count for i in indices):
            raise ValueError(f"--local-agent-env {spec!r}: agent process indices must be in 0..{count - 1} "
                             "(see --agent-processes)")
        for i in indices:
            envs.setdefault(i, {})[name] = value
    return envs


def default_processes(slots: int, cores: int | None = None) -> int:
    """One agent process per core but one (the PS's own), at least one, never more than the slots. Every process
    starts with a torch import (seconds of CPU), and all of them start at once with the PS's own, so on a small
    machine fewer processes reach the first step sooner; each process computes on all cores anyway."""
    return max(1, min(slots, (cores or os.cpu_count() or 1) - 1))


def split_slots(slots: int, processes: int) -> list[int]:
    """``slots`` worker slots over ``processes`` processes as evenly as possible (the first ones get one more)."""
    processes = max(1, min(slots, processes))
    base, extra = divmod(slots, processes)
    return [base + (i < extra) for i in range(processes)]


def write_token_file(path: Path, token: str) -> Path:
    """Write the cluster token readable by this user only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)
    return path
