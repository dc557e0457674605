"""``--codec auto`` (issue 16): the pure chooser, and a live link on 127.0.0.1 whose reader slows down and speeds up
again, so the sender moves from raw to a blosc2 codec and back, every vector arriving bit-identical."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

import wire
from wire.autocodec import (
    HYSTERESIS,
    MIN_SAMPLE_BYTES,
    PRIORS,
    AutoCodec,
    CodecFigures,
    EncodeFigures,
    choose,
    effective_rate,
    parse_codec_choice,
)
from wire.codec import Codec
from wire.frames import Kind

TOKEN = "a" * 32
GBIT = 1e9 / 8


def test_raw_on_fast_links_and_compression_on_slow_ones() -> None:
    assert choose(PRIORS, None) is Codec.NONE  # nothing measured: raw
    assert choose(PRIORS, 3.8e9) is Codec.NONE  # loopback
    assert choose(PRIORS, 10 * GBIT) is Codec.NONE
    assert choose(PRIORS, 0.1 * GBIT) is Codec.ZSTD  # 100 Mbit/s: the better ratio pays
    fast_lz4 = dict(PRIORS, **{Codec.LZ4: CodecFigures(2.7e9, 1.15)})
    assert choose(fast_lz4, 0.4 * GBIT) is Codec.LZ4


def test_effective_rate_model() -> None:
    assert effective_rate(PRIORS[Codec.NONE], 1e8) == pytest.approx(1e8)
    # 1 GB at 1.1 GB/s encode plus 1/1.18 GB on a 0.1 GB/s link
    assert 1 / effective_rate(PRIORS[Codec.ZSTD], 1e8) == pytest.approx(1 / 1.1e9 + 1 / (1.18 * 1e8))


def test_hysteresis_keeps_the_current_codec_on_a_small_gain() -> None:
    link = 1e8
    zstd, none = effective_rate(PRIORS[Codec.ZSTD], link), effective_rate(PRIORS[Codec.NONE], link)
    assert zstd > none
    # find a link rate where zstd wins by less than the hysteresis: raw stays, and a fresh choice is zstd
    rate = next(r for r in np.linspace(1e8, 3e8, 2001)
                if 1 < effective_rate(PRIORS[Codec.ZSTD], r) / effective_rate(PRIORS[Codec.NONE], r) < HYSTERESIS)
    assert choose(PRIORS, rate, current=Codec.NONE) is Codec.NONE
    assert choose(PRIORS, rate) is Codec.ZSTD


def test_auto_codec_follows_measurements_and_ignores_small_samples() -> None:
    auto = AutoCodec(encodes=EncodeFigures())
    assert auto.pick() is Codec.NONE
    auto.record_send(MIN_SAMPLE_BYTES - 1, 10.0)  # too small to time a link
    assert auto.link_rate is None
    for _ in range(3):
        auto.record_send(50 << 20, 5.0)  # 10 MB/s
    assert auto.pick() is Codec.ZSTD and auto.switches == 1
    for _ in range(10):
        auto.record_send(50 << 20, 0.01)  # 5 GB/s
    assert auto.pick() is Codec.NONE and auto.switches == 2
    # measured encodes replace the priors: a ZSTD that turns out slow is no longer chosen on a 0.5 Gbit/s link
    auto.link_rate = 0.5 * GBIT
    assert auto.pick() is Codec.ZSTD
    auto.encodes.record(Codec.ZSTD, 64 << 20, 60 << 20, 1.0)  # the first measurement replaces the prior
    assert auto.encodes.figures[Codec.ZSTD] == CodecFigures((64 << 20) / 1.0, 64 / 60)
    assert auto.pick() in (Codec.NONE, Codec.LZ4)
    assert auto.describe()["codec"] == auto.current.value


def test_loopback_links_stay_raw() -> None:
    from wire.autocodec import is_loopback

    assert is_loopback(("127.0.0.1", 5)) and is_loopback(("::1", 5, 0, 0))
    assert not is_loopback(("10.213.1.2", 5)) and not is_loopback(None) and not is_loopback("x")
    auto = AutoCodec(encodes=EncodeFigures(), loopback=True, link_rate=1e6)  # slow, but this machine
    assert auto.pick() is Codec.NONE


def test_codec_choice_is_validated() -> None:
    assert parse_codec_choice("auto") == "auto" and parse_codec_choice("zstd") == "zstd"
    with pytest.raises(ValueError, match="choose from auto, none, lz4, zstd"):
        parse_codec_choice("gzip")


def test_live_link_switches_codec_as_the_reader_slows_and_recovers() -> None:
    """The receiver holds each payload for ``pause`` seconds before reading it (a slow link as the sender sees
    it: its buffer drains slowly); the sender, on --codec auto, compresses while that lasts and returns to raw."""
    d = 3 << 20  # 12 MiB vectors: above MIN_SAMPLE_BYTES
    vectors = [np.random.default_rng(i).standard_normal(d).astype(np.float32) for i in range(3)]
    pause = {"s": 0.6}
    received: list[tuple[str, bool]] = []

    async def on_connection(conn: wire.Connection) -> None:
        dest = np.empty(d, np.float32)
        async for msg in conn:
            await asyncio.sleep(pause["s"])
            assert msg.vector is not None
            codec = msg.vector.codec.value
            await msg.read_vector_into(dest, digest=False)
            received.append((codec, bool(np.array_equal(dest, vectors[msg.header["i"] % 3]))))
            await conn.reply(msg, Kind.FETCH, {})

    async def main() -> list[str]:
        server = await wire.serve("127.0.0.1", 0, on_connection, token=TOKEN)
        try:
            conn = await wire.connect("127.0.0.1", server.port, token=TOKEN, role="agent")
            try:
                assert conn.tx_codec.loopback  # a 127.0.0.1 link: raw whatever its rate ...
                conn.tx_codec = AutoCodec(encodes=EncodeFigures())  # ... so this test treats it as a remote one
                picks = []
                for i in range(14):
                    if i == 4:
                        pause["s"] = 0.0
                    picks.append(conn.pick_codec("auto", 1)[0].value)
                    enc = await asyncio.get_running_loop().run_in_executor(
                        None, conn.encode_timed, vectors[i % 3], *conn.pick_codec("auto", 1))
                    await conn.request(Kind.VECTOR, {"i": i}, vector=enc, timeout=20)
                return picks
            finally:
                await conn.close()
        finally:
            await server.close()

    started = time.monotonic()
    picks = asyncio.run(asyncio.wait_for(main(), 60))
    assert time.monotonic() - started < 60
    assert all(ok for _, ok in received) and len(received) == 14
    assert [codec for codec, _ in received] == picks
    assert picks[0] == "none" and picks[1] != "none", picks  # slow: ~20 MB/s measured
    assert picks[-1] == "none", picks  # fast again (loopback)


def test_send_vector_auto_and_agent_job_accept_auto() -> None:
    from shield_agent.client import AgentJob
    from shield_model.errors import ComputeError

    header: dict[str, Any] = {"worker": 0, "files": [0], "network": "LeNet", "dataset": "MNIST", "seed": 0,
                              "batch_size": 10, "num_files": 1, "threads": 1, "codec": "auto", "codec_level": 1}
    assert AgentJob.from_header(header).codec == "auto"
    with pytest.raises(ComputeError, match="unknown codec"):
        AgentJob.from_header(dict(header, codec="gzip"))
