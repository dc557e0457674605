"""Helpers for the runtime integration tests: start real PS and agent processes on 127.0.0.1, read their events."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from shield_model.zoo.names import Dataset
from shield_model.zoo.sources import EMBEDDED
from shield_ps.cli.serve import LISTENING_PATTERN

REPO = Path(__file__).resolve().parent.parent
#: real MNIST (its test split): the copy embedded in the package, or $SHIELD_MNIST_DIR
MNIST_DIR = Path(os.environ.get("SHIELD_MNIST_DIR") or EMBEDDED[Dataset.MNIST])
TOKEN = "integration-test-token-0123456789"
_LISTEN = LISTENING_PATTERN  # the benchmarks read the port with the same pattern (listening_port)


@contextlib.contextmanager
def offline_user(root: Path) -> Iterator[dict[str, str]]:
    """The environment of a new user on a machine without internet access: an empty HOME (so an empty dataset
    cache), no $SHIELD_DATA_DIR, and every HTTP(S) request sent through a local port that refuses connections."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    with socket.socket() as refusing:  # bound, never listening: connections to it are refused at once
        refusing.bind(("127.0.0.1", 0))
        proxy = f"http://127.0.0.1:{refusing.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "shield_data_dir")}
        env.update(HOME=str(home), PYTHONPATH=str(REPO), http_proxy=proxy, https_proxy=proxy, HTTP_PROXY=proxy,
                   HTTPS_PROXY=proxy)
        yield env


def serve_command(train_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "shield_ps.cli", "serve", "--port", "0", "--plain", "--data-dir", str(MNIST_DIR),
            "--train-dir", str(train_dir), "--token", TOKEN, "--join-timeout", "180", "--gather-timeout", "120",
            *args]


def run_serve(train_dir: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess[str]:
    """Run ``shield-ps serve`` to completion; the output goes to ``train_dir/serve.log``."""
    train_dir.mkdir(parents=True, exist_ok=True)
    with open(train_dir / "serve.log", "w") as log:
        return subprocess.run(serve_command(train_dir, *args), stdout=log, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)


class Process:
    """A background process whose output goes to a file; stopped (and waited for) by :meth:`stop`."""

    def __init__(self, cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.output())
            if match:
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                                     f"{self.output()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.output()[-3000:]}")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=15)
        self._log.close()


def start_serve(train_dir: Path, *args: str) -> tuple[Process, int]:
    """Start ``shield-ps serve`` in the background; returns it and the port it listens on."""
    ps = Process(serve_command(train_dir, *args), train_dir / "serve.log")
    port = int(ps.wait_for_output(_LISTEN.pattern, timeout=120).group(1))
    return ps, port


def start_agent(port: int, log_path: Path, token: str = TOKEN, *extra: str) -> Process:
    return Process([sys.executable, "-m", "shield_agent.cli", "-v", "join", f"127.0.0.1:{port}", "--token", token,
                    "--data-dir", str(MNIST_DIR), "--no-reconnect", *extra], log_path)


def events(train_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = train_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if kind is None or event.get("kind") == kind:
            out.append(event)
    return out


def wait_for_step(train_dir: Path, step: int, timeout: float, watch: Iterable[Process] = ()) -> None:
    """Wait until a ``step`` event with index >= ``step`` is in metrics.jsonl."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["step"] >= step for e in events(train_dir, "step")):
            return
        for proc in watch:
            if proc.proc.poll() is not None:
                raise AssertionError(f"process exited early:\n{proc.output()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached within {timeout}s")


def final_params(train_dir: Path) -> Any:
    import numpy as np

    from shield_ps.checkpoint import load_latest

    checkpoint = load_latest(train_dir / "checkpoints")
    assert checkpoint is not None, f"no checkpoint in {train_dir}"
    return checkpoint.step, np.asarray(checkpoint.params)


def wait_for_worker(train_dir: Path, worker: int, timeout: float = 240, watch: Iterable[Process] = ()) -> None:
    """Wait until worker slot ``worker`` has answered JOB (a ``worker`` event in state ``connected``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["worker"] == worker and e["state"] == "connected" for e in events(train_dir, "worker")):
            return
        for proc in watch:
            if proc.proc.poll() is not None:
                raise AssertionError(f"process exited early:\n{proc.output()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"worker {worker} did not connect within {timeout}s")
