"""``--codec auto`` against every fixed codec on a shaped link (issue 16): a veth pair into a network namespace of
our own, its two directions limited by ``tc ... tbf`` to 1 Gbit/s and then 10 Gbit/s (needs root; nothing leaves
this machine: the link joins this namespace to one we create and delete).

A receiver process in the namespace reads every vector (with its BLAKE3 digest, as the PS does) and answers; the
sender sends a ResNet-18-sized vector (bench/wire_speed.py passes a real gradient; alone, a synthetic one) as a
request, end to end: encode + transfer + decode + reply. Per codec (none, lz4, zstd, auto) and rate: the best of
``reps`` vectors after ``warmup`` ones (auto measures the link on them), codecs alternated round by round so that load
from other processes hits all alike. ``auto_vs_best_fixed_<rate>`` = auto's effective rate over the best fixed
codec's.

    python bench/wire_shaped.py [--dim 11173962] [--reps 4]     (also run by bench/wire_speed.py)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package of this checkout

import numpy as np  # noqa: E402

import wire  # noqa: E402
from wire import Kind  # noqa: E402
from wire.autocodec import CODEC_CHOICES  # noqa: E402

TOKEN = "bench-shaped-token-0123456789abcdef"
RATES = {"1gbit": "1gbit", "10gbit": "10gbit"}
PORT = 7791


class ShapedLink:
    """A veth pair from this namespace into a new one, shaped both ways with tbf; :meth:`close` deletes both."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns, self.here, self.there = f"shieldb{tag}", f"sba{tag}", f"sbb{tag}"
        octet = os.getpid() % 250 + 1
        self.local, self.remote = f"10.213.{octet}.1", f"10.213.{octet}.2"
        self._run("ip", "netns", "add", self.ns)
        self._run("ip", "link", "add", self.here, "type", "veth", "peer", "name", self.there)
        self._run("ip", "link", "set", self.there, "netns", self.ns)
        self._run("ip", "addr", "add", f"{self.local}/30", "dev", self.here)
        self._run("ip", "link", "set", self.here, "up")
        self._ns("ip", "addr", "add", f"{self.remote}/30", "dev", self.there)
        self._ns("ip", "link", "set", self.there, "up")
        self._ns("ip", "link", "set", "lo", "up")

    @staticmethod
    def _run(*cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, timeout=30)

    def _ns(self, *cmd: str) -> None:
        self._run("ip", "netns", "exec", self.ns, *cmd)

    def shape(self, rate: str) -> None:
        """Limit both directions to ``rate`` (tc syntax, e.g. 1gbit)."""
        burst = "4mb" if rate.startswith("10") else "1mb"
        for runner, dev in ((self._run, self.here), (self._ns, self.there)):
            runner("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", burst,
                   "latency", "100ms")

    def command_in_ns(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.here], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)


async def receiver(host: str, port: int, d: int) -> None:
    """Read every vector with its digest and answer; exit when stdin closes (the sender is done)."""
    wire.install_event_loop()
    dest = np.empty(d, np.float32)

    async def on_connection(conn: wire.Connection) -> None:
        async for msg in conn:
            if msg.vector is None:
                msg.discard()
                continue
            await msg.read_vector_into(dest)
            await conn.reply(msg, Kind.JOB, {"ok": True})

    server = await wire.serve(host, port, on_connection, token=TOKEN)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.close()


async def send_all(host: str, port: int, x: np.ndarray, reps: int, warmup: int,
                   picked: dict[str, list[str]] | None = None) -> dict[str, float]:
    """Seconds per vector, best of ``reps`` after ``warmup``, for each codec choice; one connection per choice
    (so auto's link estimate starts from nothing, as on a new link), rounds alternating the choices. ``picked``
    (when given) receives the codec each choice used, round by round."""
    conns = {choice: await wire.connect(host, port, token=TOKEN, role="agent") for choice in CODEC_CHOICES}
    loop = asyncio.get_running_loop()
    best = {choice: float("inf") for choice in CODEC_CHOICES}
    picked = {} if picked is None else picked
    picked.update({choice: [] for choice in CODEC_CHOICES})
    try:
        for round_ in range(warmup + reps):
            order = CODEC_CHOICES if round_ % 2 == 0 else CODEC_CHOICES[::-1]
            for choice in order:
                conn = conns[choice]
                started = time.perf_counter()
                codec, level = conn.pick_codec(choice, 1)
                encoded = await loop.run_in_executor(None, conn.encode_timed, x, codec, level)
                await conn.request(Kind.VECTOR, {"round": round_}, vector=encoded, timeout=120)
                seconds = time.perf_counter() - started
                picked[choice].append(codec.value)
                if round_ >= warmup:
                    best[choice] = min(best[choice], seconds)
    finally:
        for conn in conns.values():
            await conn.close()
    print(f"    auto picked: {' '.join(picked['auto'])}")
    return best


def synthetic_vector(d: int) -> np.ndarray:
    """A synthetic gradient (shield_model.synthetic): float32 values shaped like a real gradient's."""
    from shield_model.synthetic import initial_parameters, synthetic_gradient

    return synthetic_gradient(initial_parameters(d, 0), 0, 0, 0, np.empty(d, np.float32))


def shaped_figures(d: int, reps: int, warmup: int, x: np.ndarray | None = None) -> dict[str, Any]:
    """The ``auto_vs_best_fixed_<rate>`` figures (None with a reason when the link cannot be made)."""
    what = "given vector" if x is not None else "synthetic gradient"
    if x is None:
        x = synthetic_vector(d)
    if os.geteuid() != 0:
        return {"auto_vs_best_fixed_1gbit": None, "auto_vs_best_fixed_10gbit": None, "shaped_note": "needs root"}
    out: dict[str, Any] = {"shaped_vector": what}
    try:
        link = ShapedLink()
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        return {"auto_vs_best_fixed_1gbit": None, "auto_vs_best_fixed_10gbit": None,
                "shaped_note": f"no network namespace: {exc}"}
    proc = None
    try:
        proc = subprocess.Popen(link.command_in_ns([sys.executable, __file__, "--serve", link.remote, str(PORT),
                                                    str(d)]), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError("the receiver did not start")
        for name, rate in RATES.items():
            link.shape(rate)
            seconds = asyncio.run(send_all(link.remote, PORT, x, reps, warmup))
            rates = {choice: x.nbytes / s / 1e6 for choice, s in seconds.items()}
            fixed = max((c for c in rates if c != "auto"), key=rates.__getitem__)
            out[f"auto_vs_best_fixed_{name}"] = round(rates["auto"] / rates[fixed], 4)
            out[f"shaped_{name}_mbps"] = {c: round(r, 1) for c, r in rates.items()}
            print(f"  {name}: " + ", ".join(f"{c} {r:.0f} MB/s" for c, r in rates.items())
                  + f"; auto / best fixed ({fixed}) = {rates['auto'] / rates[fixed]:.3f}", flush=True)
    finally:
        if proc is not None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        link.close()
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        host, port, d = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        asyncio.run(receiver(host, port, d))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=11_173_962)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(shaped_figures(args.dim, args.reps, args.warmup)))


if __name__ == "__main__":
    main()
