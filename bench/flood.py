"""Pre-authentication flood: step time and PS memory with ~1,000 hostile sockets against the PS (issue 11).

Runs ``shield-ps serve --local-agents K`` on 127.0.0.1 several times with the same configuration, alternating a clean
run and a flooded run (clean, flood, clean, flood, ...: the machine's load drifts, and this spreads it over both).
In a flooded run, once the agents have joined (first ``step`` event), a flooder process (this script with
``--flooder``) holds ``--sockets`` TCP sockets against the PS port from another loopback source address
(127.0.0.2 by default, so the per-host pre-auth cap applies to it and not to the agents on 127.0.0.1). Each socket
is, in turn by index, silent (connects and says nothing), a half handshake (a valid HELLO, then nothing) or garbage
(bytes that are no frame); when the PS closes one, it is reopened after ``--reconnect-delay`` seconds. The flood
stops ``--tail`` steps before the end, so the last RSS sample shows what was given back.

Measured, on the PS process alone (its pid; local agents are separate processes):

- step time: the median interval between consecutive ``step`` events over the steps run under the full flood,
  against the clean runs' median over the same step indices (target <= 1.3); the PS's own ``times.total`` too;
- RSS: ``/proc/PID/status`` sampled every ``--sample-s`` seconds; the growth is the flooded run's peak over the
  flood's steps minus the clean run's peak over the same steps (target <= +50 MB), and the same for the last sample
  of the run, after the flood stopped (was the memory given back?). ``flood_rss_growth_mb`` is on ``RssAnon``, the
  memory the PS allocated; ``VmRSS`` also counts file pages (torch's shared libraries, ~300 MB) that the kernel
  drops and reloads under memory pressure, which moved a clean run's VmRSS by 300 MB here, so it is reported
  (``flood_vmrss_*``) but is no measure of what the flood costs;
- PS CPU seconds per step over the same steps (``/proc/PID/stat``), the steadiest figure on a loaded machine;
- ``refused``: the PS's summary count of refused pre-auth connections; CPU seconds of the PS and of the flooder.

The last line is one JSON object; ``flood_step_time_ratio`` and ``flood_rss_growth_mb`` are the contract of
issue 11. Only 127.0.0.0/8 addresses are used; every process started is stopped by pid, also on errors.
"""
from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import random
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-flood-token-0123456789abcdef"
PS_HOST = "127.0.0.1"
MODES = ("silent", "hello", "garbage")


# ----------------------------------------------------------------------------------------------------------- flooder

def _hello_frame(index: int) -> bytes:
    from wire import auth
    from wire.frames import PROTOCOL_VERSION, Kind, encode_frame

    return encode_frame(Kind.HELLO, {"version": PROTOCOL_VERSION, "role": "agent", "name": f"flood-{index}",
                                     "nonce": auth.new_nonce()})


@dataclass
class _Slot:
    index: int
    mode: str
    sock: socket.socket | None = None
    connected: bool = False
    opened_at: float = 0.0
    reopen_at: float = 0.0


@dataclass
class _FloodStats:
    attempts: int = 0
    connected: int = 0
    closed_by_peer: int = 0
    connect_errors: int = 0
    connect_timeouts: int = 0
    open_samples: list[int] = field(default_factory=list)


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < need:
            print(f"flooder: RLIMIT_NOFILE hard limit {hard} < {need}; fewer sockets will be open", flush=True)


class Flooder:
    """``count`` non-blocking sockets from ``sources`` to the PS, each reopened ``delay`` s after the PS closes it."""

    def __init__(self, port: int, count: int, sources: list[str], delay: float, connect_timeout: float) -> None:
        self.port, self.delay, self.connect_timeout = port, delay, connect_timeout
        self.slots = [_Slot(i, MODES[i % len(MODES)]) for i in range(count)]
        self.sources = sources
        self.sel = selectors.DefaultSelector()
        self.stats = _FloodStats()
        self._garbage = random.Random(7).randbytes(256)
        self._reopen: list[tuple[float, int]] = []  # heap of (time, slot index) to reopen

    def _open(self, slot: _Slot, now: float) -> None:
        self.stats.attempts += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            sock.bind((self.sources[slot.index % len(self.sources)], 0))
            sock.setblocking(False)
            code = sock.connect_ex((PS_HOST, self.port))
        except OSError:
            code = -1
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.stats.connect_errors += 1
            slot.reopen_at = now + self.delay
            heapq.heappush(self._reopen, (slot.reopen_at, slot.index))
            return
        slot.sock, slot.connected, slot.opened_at = sock, False, now
        self.sel.register(sock, selectors.EVENT_WRITE | selectors.EVENT_READ, slot)

    def _close(self, slot: _Slot, now: float) -> None:
        if slot.sock is not None:
            self.sel.unregister(slot.sock)
            slot.sock.close()
        slot.sock, slot.connected, slot.reopen_at = None, False, now + self.delay
        heapq.heappush(self._reopen, (slot.reopen_at, slot.index))

    def _on_event(self, slot: _Slot, mask: int, now: float) -> None:
        sock = slot.sock
        assert sock is not None
        if not slot.connected and mask & selectors.EVENT_WRITE:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                self.stats.connect_errors += 1
                self._close(slot, now)
                return
            slot.connected = True
            self.stats.connected += 1
            try:
                if slot.mode == "hello":
                    sock.send(_hello_frame(slot.index))
                elif slot.mode == "garbage":
                    sock.send(self._garbage)
            except OSError:
                pass
            self.sel.modify(sock, selectors.EVENT_READ, slot)
            return
        if mask & selectors.EVENT_READ:
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.stats.closed_by_peer += 1
                self._close(slot, now)

    def run(self, duration: float, report_s: float = 1.0) -> None:
        """Flood until ``duration`` s pass or SIGTERM; prints ``ready`` once every socket was opened, stats each s."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        started = time.monotonic()
        end, next_report, ready = started + duration, started + report_s, False
        for slot in self.slots:
            self._open(slot, started)
        while not stop.is_set() and time.monotonic() < end:
            wait = min(0.2, max(0.0, self._reopen[0][0] - time.monotonic())) if self._reopen else 0.2
            for key, mask in self.sel.select(timeout=wait):
                self._on_event(key.data, mask, time.monotonic())
            now = time.monotonic()
            while self._reopen and self._reopen[0][0] <= now:
                slot = self.slots[heapq.heappop(self._reopen)[1]]
                if slot.sock is None:
                    self._open(slot, now)
            if not ready and self.stats.connected >= len(self.slots):
                ready = True
                print("ready", flush=True)
            if now >= next_report:
                next_report = now + report_s
                for slot in self.slots:
                    if slot.sock is not None and not slot.connected and now - slot.opened_at > self.connect_timeout:
                        self.stats.connect_timeouts += 1
                        self._close(slot, now)
                self.stats.open_samples.append(sum(s.connected for s in self.slots))
                print(json.dumps({"t": round(now - started, 2), "open": self.stats.open_samples[-1],
                                  "attempts": self.stats.attempts, "connected": self.stats.connected,
                                  "closed_by_peer": self.stats.closed_by_peer}), flush=True)
        for slot in self.slots:
            self._close(slot, time.monotonic())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        samples = self.stats.open_samples or [0]
        print("final " + json.dumps({
            "attempts": self.stats.attempts, "connected": self.stats.connected,
            "closed_by_peer": self.stats.closed_by_peer, "connect_errors": self.stats.connect_errors,
            "connect_timeouts": self.stats.connect_timeouts, "open_median": statistics.median(samples),
            "open_min": min(samples), "open_max": max(samples), "seconds": round(time.monotonic() - started, 2),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}), flush=True)


def flooder_main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    _raise_nofile(args.sockets + 256)
    sources = [f"127.0.0.{2 + i}" for i in range(args.source_hosts)]
    Flooder(args.port, args.sockets, sources, args.reconnect_delay, args.connect_timeout).run(args.duration)


# ----------------------------------------------------------------------------------------------------- one PS run

def _proc_rss_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, RssAnon) of ``pid`` in kB; None once it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["RssAnon"].split()[0])
    except (OSError, ValueError, KeyError):
        return None


def _proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


class _Metrics:
    """Incremental reader of RUN/metrics.jsonl (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path, self._offset, self.events = path, 0, []
        self.last_step = -1

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(event)
            if event.get("kind") == "step":
                self.last_step = max(self.last_step, int(event["step"]))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("kind") == kind]


@dataclass
class RunResult:
    name: str
    steps: list[dict[str, Any]]
    rss: list[tuple[float, int, int, int]]  # (time, last step seen, VmRSS kB, RssAnon kB)
    summary: dict[str, Any]
    cpu: list[tuple[int, float]]  # (last step seen, PS cpu seconds)
    flood_from: int | None = None  # first step run entirely under the full flood
    flood_to: int | None = None  # first step not under the flood
    flooder: dict[str, Any] = field(default_factory=dict)


def _stop(proc: subprocess.Popen[Any] | None, group: bool) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM) if group else proc.terminate()
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
        except ProcessLookupError:
            pass
        proc.wait(timeout=20)


def _serve_cmd(train_dir: Path, args: argparse.Namespace) -> list[str]:
    return [sys.executable, "-m", "shield_ps.cli", "serve", "--port", "0", "--host", PS_HOST, "--plain",
            "--token", TOKEN, "--local-agents", str(args.workers), "--scheme", args.scheme,
            "--workers", str(args.workers), "--replication", str(args.replication),
            *(["--rama-m", str(args.rama_m)] if args.scheme == "rama_two" else []), "--network", "LeNet",
            "--dataset", "MNIST", "--data-dir", args.data_dir, "--max-steps", str(args.steps),
            "--eval-freq", str(10 * args.steps), "--train-dir", str(train_dir), "--join-timeout", "600",
            "--seed", "0"]


def _wait_port(log_path: Path, ps: subprocess.Popen[bytes], timeout: float) -> int:
    from shield_ps.cli.serve import listening_port

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        port = listening_port(log_path.read_text(errors="replace"))
        if port is not None:
            return port
        if ps.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"the PS did not start listening:\n{log_path.read_text(errors='replace')[-2000:]}")


def run_once(name: str, train_dir: Path, args: argparse.Namespace, flood: bool) -> RunResult:
    """One PS run (with its local agents); with ``flood``, a flooder during steps [ready, steps - tail)."""
    train_dir.mkdir(parents=True)
    log_path = train_dir / "serve.log"
    metrics = _Metrics(train_dir / "metrics.jsonl")
    rss: list[tuple[float, int, int, int]] = []
    cpu: list[tuple[int, float]] = []
    result = RunResult(name, [], rss, {}, cpu)
    ps = flooder = None
    flood_log = None
    deadline = time.monotonic() + args.run_timeout
    with open(log_path, "wb") as log:
        ps = subprocess.Popen(_serve_cmd(train_dir, args), stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True, cwd=REPO)
    try:
        port = _wait_port(log_path, ps, timeout=300)
        phase = "wait-first-step" if flood else "clean"
        while ps.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: the run did not finish within --run-timeout {args.run_timeout}s")
            metrics.poll()
            kb, seconds = _proc_rss_kb(ps.pid), _proc_cpu_s(ps.pid)
            if kb is not None:
                rss.append((time.monotonic(), metrics.last_step, *kb))
            if seconds is not None:
                cpu.append((metrics.last_step, seconds))
            if phase == "wait-first-step" and metrics.last_step >= 0:
                flood_log = open(train_dir / "flooder.log", "w")
                flooder = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--flooder", "--port", str(port),
                     "--sockets", str(args.sockets), "--source-hosts", str(args.source_hosts),
                     "--reconnect-delay", str(args.reconnect_delay), "--duration", str(args.run_timeout)],
                    stdout=flood_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
                phase, ready_by = "wait-ready", time.monotonic() + 120
            elif phase == "wait-ready":
                if "ready" in (train_dir / "flooder.log").read_text(errors="replace").split("\n"):
                    result.flood_from, phase = metrics.last_step + 2, "flooding"
                elif time.monotonic() > ready_by or (flooder is not None and flooder.poll() is not None):
                    raise RuntimeError(f"{name}: the flooder never had all {args.sockets} sockets connected:\n"
                                       f"{(train_dir / 'flooder.log').read_text(errors='replace')[-2000:]}")
            elif phase == "flooding" and metrics.last_step >= args.steps - 1 - args.tail:
                _stop(flooder, group=True)
                result.flood_to, phase = metrics.last_step + 1, "after"
            time.sleep(args.sample_s)
        if ps.returncode != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name}: the PS exited {ps.returncode}:\n{tail}")
        if flood and result.flood_to is None:
            raise RuntimeError(f"{name}: the run ended before the flood was stopped (phase {phase}); more --steps?")
    finally:
        _stop(flooder, group=True)
        _stop(ps, group=True)
        if flood_log is not None:
            flood_log.close()
    metrics.poll()
    with open(train_dir / "rss.jsonl", "w") as fh:  # for a look with --keep
        fh.writelines(json.dumps({"t": t, "last_step": step, "vmrss_kb": vm, "rssanon_kb": anon}) + "\n"
                      for t, step, vm, anon in rss)
    result.steps = metrics.of("step")
    summaries = metrics.of("summary")
    result.summary = summaries[-1] if summaries else {}
    if flood:
        for line in (train_dir / "flooder.log").read_text(errors="replace").splitlines():
            if line.startswith("final "):
                result.flooder = json.loads(line[len("final "):])
    return result


# ------------------------------------------------------------------------------------------------------- figures

def _intervals(steps: list[dict[str, Any]], lo: int, hi: int) -> list[float]:
    """Wall seconds between the event of step i-1 and step i, for lo <= i < hi."""
    at = {int(e["step"]): float(e["time"]) for e in steps}
    return [at[i] - at[i - 1] for i in range(lo, hi) if i in at and i - 1 in at]


def _totals(steps: list[dict[str, Any]], lo: int, hi: int) -> list[float]:
    return [float(e["times"]["total"]) for e in steps if lo <= int(e["step"]) < hi and "total" in e.get("times", {})]


def _rss_mb(run: RunResult, lo: int, hi: int, column: int) -> list[float]:
    return [sample[column] / 1024 for sample in run.rss if lo <= sample[1] < hi]


def _end_mb(run: RunResult, column: int) -> float:
    return run.rss[-1][column] / 1024


def _cpu_s(run: RunResult, lo: int, hi: int) -> float | None:
    """PS CPU seconds while steps lo..hi-1 ran."""
    inside = [s for step, s in run.cpu if lo - 1 <= step < hi - 1]
    return inside[-1] - inside[0] if len(inside) >= 2 else None


VMRSS, ANON = 2, 3


def figures(pairs: list[tuple[RunResult, RunResult]], args: argparse.Namespace) -> dict[str, Any]:
    clean_iv, flood_iv, clean_tot, flood_tot, rows = [], [], [], [], []
    growth: dict[str, list[float]] = {"anon_peak": [], "anon_end": [], "vmrss_peak": [], "vmrss_end": []}
    refused, flooders, cpu, measured = [], [], {"clean": 0.0, "flood": 0.0}, 0
    for clean, flood in pairs:
        lo, hi = max(flood.flood_from or 0, args.warmup), flood.flood_to or args.steps
        if hi - lo < 3:
            raise RuntimeError(f"only {hi - lo} steps under the full flood in {flood.name}; raise --steps")
        civ, fiv = _intervals(clean.steps, lo, hi), _intervals(flood.steps, lo, hi)
        clean_iv += civ
        flood_iv += fiv
        clean_tot += _totals(clean.steps, lo, hi)
        flood_tot += _totals(flood.steps, lo, hi)
        row: dict[str, Any] = {"pair": flood.name, "steps": f"[{lo},{hi})", "clean_s": statistics.median(civ),
                               "flood_s": statistics.median(fiv)}
        for name, column in (("anon", ANON), ("vmrss", VMRSS)):
            row[f"clean_{name}_pk"] = max(_rss_mb(clean, lo, hi, column))
            row[f"flood_{name}_pk"] = max(_rss_mb(flood, lo, hi, column))
            row[f"clean_{name}_end"], row[f"flood_{name}_end"] = _end_mb(clean, column), _end_mb(flood, column)
            growth[f"{name}_peak"].append(row[f"flood_{name}_pk"] - row[f"clean_{name}_pk"])
            growth[f"{name}_end"].append(row[f"flood_{name}_end"] - row[f"clean_{name}_end"])
        c_cpu, f_cpu = _cpu_s(clean, lo, hi), _cpu_s(flood, lo, hi)
        row["clean_cpu"] = None if c_cpu is None else c_cpu / (hi - lo)
        row["flood_cpu"] = None if f_cpu is None else f_cpu / (hi - lo)
        cpu["clean"] += c_cpu or 0.0
        cpu["flood"] += f_cpu or 0.0
        measured += hi - lo
        refused.append(int(flood.summary.get("refused", 0)))
        flooders.append(flood.flooder)
        row.update(refused=refused[-1], clean_refused=int(clean.summary.get("refused", 0)), flooder=flood.flooder)
        rows.append(row)
    c_med, f_med = statistics.median(clean_iv), statistics.median(flood_iv)
    return {
        "flood_step_time_ratio": round(f_med / c_med, 3),
        "flood_rss_growth_mb": round(max(growth["anon_peak"]), 1),
        "flood_rss_after_mb": round(max(growth["anon_end"]), 1),
        "flood_vmrss_growth_mb": round(max(growth["vmrss_peak"]), 1),
        "flood_vmrss_after_mb": round(max(growth["vmrss_end"]), 1),
        "clean_median_step_s": round(c_med, 4), "flood_median_step_s": round(f_med, 4),
        "flood_step_total_ratio": round(statistics.median(flood_tot) / statistics.median(clean_tot), 3),
        "flood_ps_cpu_ratio": round(cpu["flood"] / cpu["clean"], 3) if cpu["clean"] else None,
        "ps_cpu_per_step_clean_s": round(cpu["clean"] / max(1, measured), 4),
        "ps_cpu_per_step_flood_s": round(cpu["flood"] / max(1, measured), 4),
        "refused": min(refused), "sockets": args.sockets, "source_hosts": args.source_hosts,
        "reconnect_delay_s": args.reconnect_delay, "pairs": len(pairs), "steps_measured": len(flood_iv),
        "flooder_connects": sum(f.get("connected", 0) for f in flooders),
        "flooder_open_median": statistics.median(f.get("open_median", 0) for f in flooders),
        "flooder_cpu_s": round(sum(f.get("cpu_s", 0.0) for f in flooders), 1),
        "scheme": args.scheme, "K": args.workers, "r": args.replication, "steps": args.steps,
        "_rows": rows,
    }


def print_report(fig: dict[str, Any]) -> None:
    rows = fig.pop("_rows")
    print(f"\n{'pair':7} {'steps':8} {'clean s':>7} {'flood s':>7} {'ratio':>5} | {'RssAnon MB peak c/f':>19} "
          f"{'end c/f':>11} | {'VmRSS MB peak c/f':>17} {'end c/f':>11} | {'PS cpu/step c/f':>15} "
          f"{'refused':>7} {'flooder conn/open/cpu':>21}")
    for r in rows:
        cpu = (f"{r['clean_cpu']:.3f}/{r['flood_cpu']:.3f}" if r["clean_cpu"] is not None
               and r["flood_cpu"] is not None else "-")
        fl = r["flooder"]
        print(f"{r['pair']:7} {r['steps']:8} {r['clean_s']:7.3f} {r['flood_s']:7.3f} "
              f"{r['flood_s'] / r['clean_s']:5.2f} | {r['clean_anon_pk']:9.1f}/{r['flood_anon_pk']:<9.1f} "
              f"{r['clean_anon_end']:5.0f}/{r['flood_anon_end']:<5.0f} | {r['clean_vmrss_pk']:8.1f}/"
              f"{r['flood_vmrss_pk']:<8.1f} {r['clean_vmrss_end']:5.0f}/{r['flood_vmrss_end']:<5.0f} | {cpu:>15} "
              f"{r['refused']:7d} {fl.get('connected', 0):>9}/{fl.get('open_median', 0):g}/{fl.get('cpu_s', 0):.1f}s")
    print(f"\nstep time (median interval between step events): clean {fig['clean_median_step_s']:.3f} s, "
          f"flood {fig['flood_median_step_s']:.3f} s -> ratio {fig['flood_step_time_ratio']:.3f} (target <= 1.3); "
          f"PS times.total ratio {fig['flood_step_total_ratio']:.3f}; PS CPU ratio {fig['flood_ps_cpu_ratio']}")
    print(f"PS RssAnon growth: peak during the flood {fig['flood_rss_growth_mb']:+.1f} MB (target <= +50), at the "
          f"end after the flood {fig['flood_rss_after_mb']:+.1f} MB; VmRSS (includes file pages that the kernel "
          f"evicts under memory pressure): {fig['flood_vmrss_growth_mb']:+.1f} / {fig['flood_vmrss_after_mb']:+.1f} "
          f"MB; refused {fig['refused']} connections")
    print(json.dumps(fig))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scheme", default="rama_two")
    parser.add_argument("--workers", type=int, default=9)
    parser.add_argument("--replication", type=int, default=3)
    parser.add_argument("--rama-m", type=int, default=3, help="m of --scheme rama_two (default 3)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5, help="steps never measured")
    parser.add_argument("--tail", type=int, default=8, help="flood-free steps at the end (memory given back?)")
    parser.add_argument("--rounds", type=int, default=2, help="(clean, flood) pairs, alternating")
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--source-hosts", type=int, default=1, help="flood from 127.0.0.2 .. 127.0.0.(1+N)")
    parser.add_argument("--reconnect-delay", type=float, default=0.1, help="seconds before reopening a socket")
    parser.add_argument("--sample-s", type=float, default=0.25, help="RSS/metrics sampling period")
    parser.add_argument("--run-timeout", type=float, default=1500, help="seconds one PS run may take")
    parser.add_argument("--data-dir", default=os.environ.get("SHIELD_MNIST_DIR") or
                        str(REPO / "shield_model" / "zoo" / "embedded" / "mnist"),
                        help="MNIST directory (default: $SHIELD_MNIST_DIR, else the test split embedded in the "
                             "package)")
    parser.add_argument("--keep", help="keep the run directories under this path (default: a temporary one)")
    parser.add_argument("--flooder", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=600, help=argparse.SUPPRESS)
    parser.add_argument("--connect-timeout", type=float, default=5.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("steps", "rounds", "sockets", "source_hosts", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 1 <= args.source_hosts <= 250:
        parser.error("--source-hosts must be in 1..250 (127.0.0.2 .. 127.0.0.251)")
    if args.reconnect_delay < 0 or args.sample_s <= 0 or args.run_timeout <= 0:
        parser.error("--reconnect-delay must be >= 0, --sample-s and --run-timeout > 0")
    if args.steps < args.warmup + args.tail + 8:
        parser.error("--steps must leave at least 8 steps between --warmup and --tail")
    if args.flooder:
        if args.port is None or not 1 <= args.port <= 65535:
            parser.error("--flooder needs --port in 1..65535")
        flooder_main(args)
        return
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    pairs: list[tuple[RunResult, RunResult]] = []
    with tempfile.TemporaryDirectory(prefix="shield-bench-flood-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        for i in range(args.rounds):
            clean = run_once(f"clean{i}", root / f"clean{i}", args, flood=False)
            print(f"clean{i}: {len(clean.steps)} steps, summary refused={clean.summary.get('refused')}", flush=True)
            flood = run_once(f"flood{i}", root / f"flood{i}", args, flood=True)
            print(f"flood{i}: {len(flood.steps)} steps, flood over steps [{flood.flood_from},{flood.flood_to}), "
                  f"refused={flood.summary.get('refused')}, flooder {flood.flooder}", flush=True)
            pairs.append((clean, flood))
    print_report(figures(pairs, args))


if __name__ == "__main__":
    main()
