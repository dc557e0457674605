"""A shield cluster in the fleet bed (tests/fleet_bed.py): ``shield-ps serve --synthetic-d D`` in node ``ps`` and
synthetic agents (``shield-agent join --synthetic S``, no torch), one process per node, each joining the PS by name
(``ps.bed``, resolved through the namespaces' /etc/hosts, so a PS that moves is found at its new address).

Used by bench/fleet.py and tests/test_fleet_bed.py. The step events come from the run's ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.fleet_bed import FleetBed, Link, Node

TOKEN = "fleet-bed-token-0123456789abcdef"
PS_PORT = 7700
PS_NAME = "ps.bed"


class BedCluster:
    """A PS and ``agents`` agent processes, each in its own namespace of ``bed``; stopped with the bed."""

    def __init__(self, bed: FleetBed, run_dir: Path, *, d: int, scheme: str, workers: int, replication: int,
                 ps_link: Link, agent_links: Sequence[Link], seconds_per_file: float, steps: int,
                 serve_flags: Sequence[str] = (), agent_flags: Sequence[str] = (), slots: Sequence[int] = ()) -> None:
        self.bed, self.run_dir = bed, run_dir
        self.train_dir = run_dir / "run"
        self.serve_args = [sys.executable, "-m", "shield_ps.cli", "serve", "--host", "0.0.0.0", "--port",
                           str(PS_PORT), "--plain", "--token", TOKEN, "--synthetic-d", str(d), "--scheme", scheme,
                           "--workers", str(workers), "--replication", str(replication), "--max-steps", str(steps),
                           "--eval-freq", str(max(steps, 1)), "--train-dir", str(self.train_dir),
                           "--join-timeout", "300", *serve_flags]
        self.ps_node = bed.add("ps", ps_link)
        bed.name(PS_NAME, self.ps_node)
        self.agent_nodes: list[Node] = [bed.add(f"a{i:02d}", link) for i, link in enumerate(agent_links)]
        slots = list(slots) or [1] * len(self.agent_nodes)
        self.ps = bed.start(self.ps_node, self.serve_args, run_dir / "serve.log")
        self.agents = [bed.start(node, [sys.executable, "-m", "shield_agent.cli", "join", f"{PS_NAME}:{PS_PORT}",
                                        "--token", TOKEN, "--synthetic", str(seconds_per_file), "--workers",
                                        str(n), "--name", node.name, *agent_flags], run_dir / f"{node.name}.log")
                       for node, n in zip(self.agent_nodes, slots, strict=False)]

    # ---- events -----------------------------------------------------------------------------------------------
    def events(self, kind: str = "step") -> list[dict[str, Any]]:
        path = self.train_dir / "metrics.jsonl"
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # the line being written
                continue
            if event.get("kind") == kind:
                out.append(event)
        return out

    def wait_steps(self, count: int, timeout: float) -> list[dict[str, Any]]:
        """Wait until ``count`` step events are written (or the PS exits); fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            steps = self.events()
            if len(steps) >= count:
                return steps
            if self.ps.poll() is not None:
                raise AssertionError(f"the PS exited ({self.ps.returncode}) after {len(steps)} steps:\n"
                                     f"{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(steps)} of {count} steps in {timeout:.0f}s:\n{self.log()[-3000:]}")
            time.sleep(0.25)

    def wait_done(self, timeout: float) -> list[dict[str, Any]]:
        """Wait for the PS to end the run; its step events."""
        try:
            code = self.ps.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the run did not end in {timeout:.0f}s:\n{self.log()[-3000:]}") from None
        if code != 0:
            raise AssertionError(f"the PS exited {code}:\n{self.log()[-3000:]}")
        return self.events()

    def log(self, name: str = "serve") -> str:
        try:
            return (self.run_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
