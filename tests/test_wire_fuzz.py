"""Hypothesis against the parser and a live server: random and mutated frames raise only typed errors, and the
server keeps serving a good peer."""
from __future__ import annotations

import asyncio
import logging
import tracemalloc

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wire
from tests.test_wire_conn import FAST, RawPeer, echo, good_round_trip, run, serving
from wire.codec import Codec, decode_vector_into, encode_vector
from wire.errors import ProtocolError, WireError
from wire.frames import MAGIC, PREFIX, Kind, Limits, encode_frame
from wire.reader import FrameReader

LIMITS = Limits(max_header_bytes=2048, handshake_header_bytes=1024, max_payload_bytes=1 << 16,
                max_vector_elems=1 << 14, max_chunks=16, max_chunk_elems=4096, max_container_items=64)
X = np.arange(3000, dtype=np.float32)
VALID = [encode_frame(Kind.JOB, {"model": "LeNet", "seeds": [1, 2], "x": 1.5, "b": b"\x00"}, msg_id=1),
         encode_frame(Kind.DIGESTS, {"d": [b"\x01" * 32]}, reply_to=4),
         encode_frame(Kind.HEARTBEAT),
         *(encode_frame(Kind.VECTOR, {"f": 1}, msg_id=2, vector=e.desc) + b"".join(bytes(c) for c in e.chunks)
           for e in (encode_vector(X, c, chunk_elems=1024) for c in Codec))]
TYPED_CODES = {None, "frame", "limit", "vector", "role", "protocol", "auth", "timeout"}


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Valid frames, concatenated, then bytes flipped, cut, inserted or a length field rewritten."""
    data = bytearray(b"".join(draw(st.lists(st.sampled_from(VALID), min_size=1, max_size=3))))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "length":
            data[8:20] = PREFIX.pack(MAGIC, 1, 0, 0, draw(st.integers(0, 1 << 32 - 1)),
                                     draw(st.integers(0, 1 << 64 - 1)))[8:]
    return bytes(data)


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats() | st.text(max_size=6)
    | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=8)
SMALL_INT = st.integers(-2, 5000)
DESC = st.fixed_dictionaries({
    "dtype": st.sampled_from(["float32", "float64", ""]), "n": SMALL_INT, "chunk": SMALL_INT,
    "codec": st.sampled_from([c.value for c in Codec] + ["lz5"]), "sizes": st.lists(SMALL_INT, max_size=4)})
HEADERS = st.one_of(PLAIN, st.fixed_dictionaries(
    {"k": st.sampled_from([k.value for k in Kind]) | st.text(max_size=4)},
    optional={"i": SMALL_INT | PLAIN, "r": SMALL_INT | PLAIN, "h": PLAIN, "v": DESC | PLAIN, "x": PLAIN}))


@st.composite
def forged(draw: st.DrawFn) -> bytes:
    """A well-formed prefix around a msgpack header of random shape and a payload of the size it implies."""
    obj = draw(HEADERS)
    head = msgpack.packb(obj, use_bin_type=True)
    sizes = obj.get("v", {}).get("sizes") if isinstance(obj, dict) and isinstance(obj.get("v"), dict) else None
    declared = sum(s for s in sizes if isinstance(s, int)) if isinstance(sizes, list) else draw(st.integers(0, 64))
    declared = max(0, min(declared, 1 << 15))
    payload = draw(st.binary(min_size=0, max_size=64)) * (declared // 64 + 1)
    return PREFIX.pack(MAGIC, 1, 0, 0, len(head), declared) + head + payload[:declared]


FUZZ = st.one_of(st.binary(max_size=600), mutated(), forged(),
                 st.builds(lambda b: MAGIC + b"\x01" + b, st.binary(max_size=80)))


def parse_all(data: bytes) -> tuple[list[wire.Frame], list[np.ndarray]]:
    """Feed ``data``; collect payloads and decode every vector into a destination of its declared size. Returns the
    frames parsed and the vectors decoded."""
    pending: list = []
    frames: list[wire.Frame] = []
    vectors: list[np.ndarray] = []

    def on_frame(frame: wire.Frame) -> None:
        frames.append(frame)
        if frame.payload_len:
            pending.append((frame, bytearray(frame.payload_len)))
            reader.attach(Collect(pending[-1][1]))

    reader = FrameReader(LIMITS, on_frame)
    reader.feed(data)
    for frame, payload in pending:
        if len(payload) == frame.payload_len and reader.frames_in:
            chunks, pos = [], 0
            for size in frame.vector.sizes:
                chunks.append(bytes(payload[pos:pos + size]))
                pos += size
            vectors.append(np.empty(frame.vector.n, np.float32))
            decode_vector_into((frame.vector, chunks), vectors[-1])
    return frames, vectors


class Collect:
    def __init__(self, buf: bytearray) -> None:
        self.view, self.pos = memoryview(buf), 0

    def region(self) -> memoryview:
        return self.view[self.pos:]

    def advance(self, n: int) -> None:
        self.pos += n


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(FUZZ)
def test_parser_raises_only_typed_errors(data: bytes) -> None:
    try:
        parse_all(data)
    except ProtocolError:
        pass


def test_valid_stream_parses_completely() -> None:
    frames, vectors = parse_all(b"".join(VALID))
    assert [f.kind for f in frames] == [Kind.JOB, Kind.DIGESTS, Kind.HEARTBEAT] + [Kind.VECTOR] * len(Codec)
    assert frames[0].header == {"model": "LeNet", "seeds": [1, 2], "x": 1.5, "b": b"\x00"} and frames[0].msg_id == 1
    assert frames[1].header == {"d": [b"\x01" * 32]} and frames[1].reply_to == 4
    assert len(vectors) == len(Codec) and all(np.array_equal(v, X) for v in vectors)


def test_oversize_declared_payload_allocates_nothing() -> None:
    reader = FrameReader(Limits(), lambda f: None)
    tracemalloc.start()
    try:
        with pytest.raises(wire.LimitError):
            reader.feed(PREFIX.pack(MAGIC, 1, 0, 0, 100, (1 << 64) - 1))
        assert tracemalloc.get_traced_memory()[1] < 64 * 1024
    finally:
        tracemalloc.stop()


class Bug(logging.Handler):
    """Records log records at ERROR and above (our 'internal error' path logs there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), FUZZ)
def test_live_server_survives_fuzz(authenticate: bool, data: bytes) -> None:
    bug = Bug()
    logging.getLogger("wire").addHandler(bug)
    errors: list = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        async with serving(echo, limits=LIMITS) as server:
            peer = await RawPeer.open(server.port)
            if authenticate:
                await peer.handshake()
                assert (await peer.recv()).kind is Kind.WELCOME
            peer.writer.write(data)
            await peer.writer.drain()
            peer.writer.write_eof()
            assert await peer.closed_with() in TYPED_CODES
            peer.close()
            await good_round_trip(server.port)
    try:
        run(main(), 10)
    finally:
        logging.getLogger("wire").removeHandler(bug)
    assert not bug.records and not errors


def test_truncated_frame_then_eof_closes_quietly() -> None:
    async def main() -> None:
        closed: list = []

        async def owner(conn: wire.Connection) -> None:
            await echo(conn)
            closed.append(conn.close_error)

        async with serving(owner) as server:
            peer = await RawPeer.open(server.port)
            await peer.handshake()
            await peer.recv()
            peer.writer.write(VALID[0][:-3])
            peer.writer.write_eof()
            assert await peer.closed_with() is None
            peer.close()
            await good_round_trip(server.port)
        assert isinstance(closed[0], wire.ConnectionClosed)
    run(main())


def test_oversize_payload_declared_live_is_refused() -> None:
    async def main() -> None:
        async with serving(echo, timeouts=FAST) as server:
            peer = await RawPeer.open(server.port)
            await peer.handshake()
            await peer.recv()
            peer.writer.write(PREFIX.pack(MAGIC, 1, 0, 0, 10, 1 << 40))
            assert await peer.closed_with() == "limit"
            peer.close()
            await good_round_trip(server.port)
    run(main())


def test_errors_are_all_wire_errors_with_codes() -> None:
    codes = {cls.code for cls in [wire.WireError, *_subclasses(wire.WireError)]}
    assert len(codes) == 1 + len(_subclasses(wire.WireError))  # every class has its own code


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


assert issubclass(ProtocolError, WireError)


@pytest.mark.parametrize("codec", [Codec.LZ4, Codec.ZSTD])
def test_corrupt_chunk_on_the_wire_closes_only_that_peer(codec: Codec) -> None:
    enc = encode_vector(X, codec, chunk_elems=1024)
    chunks = [bytearray(c) for c in enc.chunks]
    chunks[1][32:36] = b"\xff\xff\xff\x7f"  # first block offset far past the chunk: the sizes match, decoding fails

    async def main() -> None:
        async with serving(echo, timeouts=FAST) as server:
            peer = await RawPeer.open(server.port)
            await peer.handshake()
            await peer.recv()
            peer.writer.write(encode_frame(Kind.VECTOR, {}, msg_id=1, vector=enc.desc) + b"".join(chunks))
            assert await peer.closed_with() == "vector"
            peer.close()
            await good_round_trip(server.port)
    run(main())
