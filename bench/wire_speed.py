"""Benchmark: the wire against bare blosc2 and a bare socket, for a ResNet-18-sized float32 vector (d = 11,173,962).

All on 127.0.0.1 in one run; senders are separate processes. Ratios are ours over the baseline measured here:

- encode_vs_blosc2 / decode_vs_blosc2: :func:`wire.encode_vector` / :func:`wire.decode_vector_into` (no digest)
  against a bare loop of ``blosc2.compress2`` / ``decompress2`` into a preallocated buffer, same chunks and settings;
- transfer_vs_socket: PS-side ``request(FETCH)`` + ``read_vector_into`` with codec none (and no digest), against a
  blocking ``sendall`` / ``recv_into`` loop of the same bytes; with the digest too, and LZ4 / ZSTD end to end
  (the sender encodes per request);
- fanin_vs_single: 15 agents answering one FETCH each at once (codec none, no digest; and with the digest),
  aggregate rate over the single raw-socket rate measured alongside.

Every figure is the best of ``--reps`` runs, each run of ours alternated with a run of its baseline. Receiver CPU
time per vector is printed too: it is far less sensitive than wall time to other load on the machine.

Also a real ResNet-18 gradient from torch when the agent zoo imports, and (root only, bench/wire_shaped.py)
``auto_vs_best_fixed_1gbit`` / ``auto_vs_best_fixed_10gbit``: ``--codec auto`` against the best fixed codec on a
veth link shaped by tc, end to end with the real gradient. The last line is one JSON object.

    python bench/wire_speed.py [--dim 11173962] [--reps 5] [--senders 15] [--level 1]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the package of this checkout

import blosc2  # noqa: E402
import numpy as np  # noqa: E402

import wire  # noqa: E402
from wire import Codec, Kind  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
MB = 1e6


def vector(d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d).astype(np.float32)


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def paired(base: Callable[[], Any], ours: Callable[[], Any], reps: int) -> tuple[float, float]:
    """Best-of-``reps`` seconds of each, alternating them so that load from other processes hits both alike."""
    tb, to = [], []
    for _ in range(reps):
        tb.append(timed(base))
        to.append(timed(ours))
    return min(tb), min(to)


# ---- codec ----------------------------------------------------------------------------------------------------------
def bench_codec(x: np.ndarray, codec: Codec, level: int, reps: int) -> dict[str, float]:
    kwargs = {"codec": {Codec.LZ4: blosc2.Codec.LZ4, Codec.ZSTD: blosc2.Codec.ZSTD}[codec], "clevel": level,
              "typesize": 4, "filters": [blosc2.Filter.SHUFFLE]}
    step = wire.codec.DEFAULT_CHUNK_ELEMS
    pieces = [x[i:i + step] for i in range(0, x.size, step)]
    dest = np.empty_like(x)
    bare_chunks = [blosc2.compress2(p, **kwargs) for p in pieces]
    outs = [dest[i:i + step] for i in range(0, x.size, step)]
    t_bare_enc, t_enc = paired(lambda: [blosc2.compress2(p, **kwargs) for p in pieces],
                               lambda: wire.encode_vector(x, codec, level), reps)
    enc = wire.encode_vector(x, codec, level)
    t_bare_dec, t_dec = paired(lambda: [blosc2.decompress2(c, dst=o) for c, o in zip(bare_chunks, outs, strict=False)],
                               lambda: wire.decode_vector_into(enc, dest, digest=False), reps)
    t_dec_digest = min(timed(lambda: wire.decode_vector_into(enc, dest)) for _ in range(reps))
    assert dest.tobytes() == x.tobytes()
    return {"ratio": x.nbytes / sum(enc.desc.sizes), "bare_enc_gbps": x.nbytes / t_bare_enc / 1e9,
            "enc_gbps": x.nbytes / t_enc / 1e9, "bare_dec_gbps": x.nbytes / t_bare_dec / 1e9,
            "dec_gbps": x.nbytes / t_dec / 1e9, "dec_digest_gbps": x.nbytes / t_dec_digest / 1e9,
            "encode_vs_blosc2": t_bare_enc / t_enc, "decode_vs_blosc2": t_bare_dec / t_dec}


# ---- raw socket baseline ---------------------------------------------------------------------------------------------
def raw_sender(port: int, d: int) -> None:
    x = vector(d)
    with socket.create_connection(("127.0.0.1", port)) as s:
        while s.recv(1) == b"g":
            s.sendall(memoryview(x).cast("B"))


class RawSocket:
    """The baseline: a 1-byte request, then ``sendall`` -> ``recv_into`` a preallocated buffer (blocking)."""

    def __init__(self, d: int) -> None:
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.proc = mp.get_context("spawn").Process(target=raw_sender, args=(self.lsock.getsockname()[1], d))
        self.proc.start()
        self.conn, _ = self.lsock.accept()
        self.buf = memoryview(np.zeros(d, np.float32)).cast("B")

    def fetch(self) -> float:
        t = time.perf_counter()
        self.conn.sendall(b"g")
        got = 0
        while got < len(self.buf):
            n = self.conn.recv_into(self.buf[got:])
            if not n:
                raise ConnectionError("sender vanished")
            got += n
        return time.perf_counter() - t

    def close(self) -> None:
        self.conn.close()
        self.lsock.close()
        self.proc.join(10)


# ---- the wire --------------------------------------------------------------------------------------------------------
def agent_main(port: int, d: int, seed: int) -> None:
    wire.install_event_loop()
    asyncio.run(agent(port, d, seed))


async def agent(port: int, d: int, seed: int) -> None:
    x = vector(d, seed)
    conn = await wire.connect("127.0.0.1", port, token=TOKEN, name=f"bench{seed}")
    cache: dict[tuple[str, int], wire.EncodedVector] = {}
    async for msg in conn:
        if msg.kind is not Kind.FETCH:
            continue
        codec, level, fresh = Codec(msg.header["codec"]), msg.header["level"], msg.header["fresh"]
        if fresh or (codec.value, level) not in cache:
            await conn.send_vector(Kind.VECTOR, {}, x, codec=codec, level=level, reply_to=msg)
            if not fresh:
                cache[(codec.value, level)] = wire.encode_vector(x, codec, level)
        else:
            await conn.send(Kind.VECTOR, {}, vector=cache[(codec.value, level)], reply_to=msg)
    await conn.close()


class Receiver:
    """The PS side: accepts agents, fetches vectors into preallocated arrays."""

    def __init__(self, d: int, senders: int) -> None:
        self.d = d
        self.conns: list[wire.Connection] = []
        self.ready = asyncio.Event()
        self.done = asyncio.Event()
        self.senders = senders
        self.dests: list[np.ndarray] = []

    async def on_connection(self, conn: wire.Connection) -> None:
        self.conns.append(conn)
        self.dests.append(np.zeros(self.d, np.float32))  # touched once: pages mapped before timing
        if len(self.conns) == self.senders:
            self.ready.set()
        await self.done.wait()

    async def fetch(self, i: int, codec: Codec, level: int, fresh: bool, digest: bool) -> bytes | None:
        msg = await self.conns[i].request(Kind.FETCH, {"codec": codec.value, "level": level, "fresh": fresh})
        return await msg.read_vector_into(self.dests[i], digest=digest)

    async def timed_fetch(self, codec: Codec, level: int, fresh: bool, digest: bool) -> float:
        t = time.perf_counter()
        await self.fetch(0, codec, level, fresh, digest)
        return time.perf_counter() - t

    async def timed_fanin(self, codec: Codec, level: int, digest: bool) -> float:
        t = time.perf_counter()
        await asyncio.gather(*(self.fetch(i, codec, level, False, digest) for i in range(len(self.conns))))
        return time.perf_counter() - t


SINGLE = {"none_s": (Codec.NONE, False, False), "none_digest_s": (Codec.NONE, False, True),
          "lz4_transfer_s": (Codec.LZ4, False, True), "lz4_e2e_s": (Codec.LZ4, True, True),
          "zstd_transfer_s": (Codec.ZSTD, False, True), "zstd_e2e_s": (Codec.ZSTD, True, True)}
FANIN = {"fanin_s": (Codec.NONE, False, False), "fanin_digest_s": (Codec.NONE, False, True)}


async def bench_wire(d: int, reps: int, senders: int, level: int) -> dict[str, float]:
    """Best-of-``reps`` seconds per fetch for each case, each rep interleaved with a raw-socket fetch."""
    raw = RawSocket(d)
    out: dict[str, float] = {}
    try:
        for count in (1, senders):
            rx = Receiver(d, count)
            server = await wire.serve("127.0.0.1", 0, rx.on_connection, token=TOKEN)
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=agent_main, args=(server.port, d, i)) for i in range(count)]
            for p in procs:
                p.start()
            await asyncio.wait_for(rx.ready.wait(), 120)
            raw_times: list[float] = []
            cases = SINGLE if count == 1 else FANIN
            raw_cpu: list[float] = []
            for key, case in cases.items():
                times, cpu = [], []
                for rep in range(reps + 1):  # the first is a warm-up (encode cache, first touch)
                    if rep % 2:  # alternate which goes first
                        c0 = time.process_time()
                        raw_t = raw.fetch()
                        c1 = time.process_time()
                    t0 = time.process_time()
                    t = await (rx.timed_fetch(case[0], level, *case[1:]) if count == 1
                               else rx.timed_fanin(case[0], level, case[2]))
                    t1 = time.process_time()
                    if not rep % 2:
                        c0 = time.process_time()
                        raw_t = raw.fetch()
                        c1 = time.process_time()
                    if rep:
                        raw_times.append(raw_t)
                        times.append(t)
                        raw_cpu.append(c1 - c0)
                        cpu.append(t1 - t0)
                out[key] = min(times)
                out[key.replace("_s", "_cpu_s")] = min(cpu)
            out["raw_s" if count == 1 else "fanin_raw_s"] = min(raw_times)
            out["raw_cpu_s"] = min(raw_cpu + [out.get("raw_cpu_s", float("inf"))])
            if count == 1:
                assert rx.dests[0].tobytes() == vector(d).tobytes()
            rx.done.set()
            await server.close()
            for p in procs:
                p.join(20)
    finally:
        raw.close()
    out["fanin_bytes"] = senders * d * 4
    return out


def real_gradient() -> np.ndarray | None:
    """One ResNet-18 (CIFAR-10) gradient from the agent zoo, or None without torch."""
    try:
        import torch

        from shield_model.zoo.flat import FlatParameters
        from shield_model.zoo.models import build_seeded_model
    except ImportError:
        return None
    model = build_seeded_model("ResNet18", "CIFAR10", 0)
    flat = FlatParameters(model)
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 3, 32, 32, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    return flat.gradient(np.empty(flat.num_params, np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=11_173_962)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--senders", type=int, default=15)
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--no-shaped", action="store_true",
                        help="leave out --codec auto on links shaped to 1 and 10 Gbit/s (bench/wire_shaped.py)")
    args = parser.parse_args()
    d, nbytes = args.dim, args.dim * 4
    print(f"vector: {d} float32 = {nbytes / MB:.1f} MB; uvloop: {wire.install_event_loop()}; "
          f"blosc2 {blosc2.__version__} threads {blosc2.nthreads}")
    x = vector(d)
    figures: dict[str, float] = {}
    for codec in (Codec.LZ4, Codec.ZSTD):
        c = bench_codec(x, codec, args.level, max(args.reps, 7))
        print(f"codec {codec.value}-{args.level}+shuffle (random): ratio {c['ratio']:.3f}; encode {c['enc_gbps']:.2f} "
              f"GB/s vs bare {c['bare_enc_gbps']:.2f} ({c['encode_vs_blosc2']:.2f}x); decode {c['dec_gbps']:.2f} vs "
              f"bare {c['bare_dec_gbps']:.2f} ({c['decode_vs_blosc2']:.2f}x); decode+digest {c['dec_digest_gbps']:.2f}")
        figures.update({f"{codec.value}_{k}": round(v, 4) for k, v in c.items()})
    figures["encode_vs_blosc2"] = min(figures["lz4_encode_vs_blosc2"], figures["zstd_encode_vs_blosc2"])
    figures["decode_vs_blosc2"] = min(figures["lz4_decode_vs_blosc2"], figures["zstd_decode_vs_blosc2"])
    grad = real_gradient()
    if grad is not None and grad.size == d:
        for codec in (Codec.LZ4, Codec.ZSTD):
            c = bench_codec(grad, codec, args.level, max(2, args.reps // 2))
            print(f"codec {codec.value} on a real ResNet-18 gradient: ratio {c['ratio']:.3f}, encode "
                  f"{c['enc_gbps']:.2f} GB/s, decode+digest {c['dec_digest_gbps']:.2f} GB/s")
            figures[f"resnet18_grad_{codec.value}_ratio"] = round(c["ratio"], 4)
    w = asyncio.run(bench_wire(d, args.reps, args.senders, args.level))
    raw_s = w["raw_s"]
    raw_gbps = nbytes / raw_s / 1e9
    print(f"raw socket sendall/recv_into: {raw_gbps:.2f} GB/s ({raw_s * 1e3:.1f} ms per vector); "
          f"receiver CPU {w['raw_cpu_s'] * 1e3:.1f} ms")
    figures["socket_rx_cpu_ms"] = round(w["raw_cpu_s"] * 1e3, 1)
    figures["socket_gbps"] = round(raw_gbps, 3)
    for key, label in (("none_s", "none"), ("none_digest_s", "none+digest"), ("lz4_transfer_s", "lz4 (pre-encoded)"),
                       ("lz4_e2e_s", "lz4 end to end"), ("zstd_transfer_s", "zstd (pre-encoded)"),
                       ("zstd_e2e_s", "zstd end to end")):
        gbps = nbytes / w[key] / 1e9
        figures[key.replace("_s", "_gbps")] = round(gbps, 3)
        cpu_ms = w[key.replace("_s", "_cpu_s")] * 1e3
        figures[key.replace("_s", "_rx_cpu_ms")] = round(cpu_ms, 1)
        print(f"wire fetch {label}: {gbps:.2f} GB/s ({w[key] * 1e3:.1f} ms, {gbps / raw_gbps:.2f}x socket); "
              f"receiver CPU {cpu_ms:.1f} ms")
    figures["transfer_vs_socket"] = round(raw_s / w["none_s"], 4)
    figures["transfer_digest_vs_socket"] = round(raw_s / w["none_digest_s"], 4)
    raw_gbps = nbytes / w["fanin_raw_s"] / 1e9  # the single-stream ceiling measured alongside the fan-in
    for key, label in (("fanin", "none"), ("fanin_digest", "none+digest")):
        gbps = w["fanin_bytes"] / w[f"{key}_s"] / 1e9
        figures[f"{key}_gbps"] = round(gbps, 3)
        figures[f"{key}_vs_single"] = round(gbps / raw_gbps, 4)
        print(f"fan-in {args.senders} senders ({label}): {gbps:.2f} GB/s aggregate "
              f"({gbps / raw_gbps:.2f}x the single raw socket, {raw_gbps:.2f} GB/s alongside)")
    for key in ("encode_vs_blosc2", "decode_vs_blosc2"):
        figures[key] = round(figures[key], 4)
    if not args.no_shaped:
        from wire_shaped import shaped_figures

        print("--codec auto against each fixed codec on a shaped veth link (tc tbf in a network namespace):")
        figures.update(shaped_figures(d, args.reps, 2, grad if grad is not None and grad.size == d else x))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
