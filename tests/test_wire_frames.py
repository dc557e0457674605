"""Frames and the reader, fed bytes directly: round trips, every cap at/below/above, truncation, garbage."""
from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from wire import codec
from wire.errors import FrameError, HeaderError, LimitError, ProtocolError
from wire.frames import (
    MAGIC,
    PREFIX,
    PREFIX_SIZE,
    PROTOCOL_VERSION,
    VECTOR_KINDS,
    Kind,
    Limits,
    encode_frame,
    parse_frame,
    parse_prefix,
)
from wire.reader import FrameReader

SMALL = Limits(max_header_bytes=1024, handshake_header_bytes=512, max_payload_bytes=4096, max_vector_elems=1000,
               max_chunks=8, max_chunk_elems=200, max_container_items=16)
HEADER = {"s": "x", "i": -3, "f": 1.5, "b": True, "raw": b"\x00\xff", "l": [1, [2, None]], "d": {"k": {}}, "n": None}


def _nested(depth: int) -> list:
    value: list = [1]
    for _ in range(depth):
        value = [value]
    return value


def _raw(obj: object, payload: bytes = b"", version: int = PROTOCOL_VERSION) -> bytes:
    head = msgpack.packb(obj, use_bin_type=True)
    return PREFIX.pack(MAGIC, version, 0, 0, len(head), len(payload)) + head + payload


def _collect(data: bytes, limits: Limits = SMALL) -> list:
    frames: list = []
    FrameReader(limits, frames.append).feed(data)
    return frames


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips(kind: Kind) -> None:
    data = encode_frame(kind, HEADER, msg_id=7, reply_to=3)
    frame, payload = parse_frame(data)
    assert (frame.kind, frame.header, frame.msg_id, frame.reply_to, len(payload)) == (kind, HEADER, 7, 3, 0)
    assert _collect(data, Limits())[0] == frame


@pytest.mark.parametrize("kind", sorted(VECTOR_KINDS))
def test_vector_frame_round_trips_through_reader_byte_by_byte(kind: Kind) -> None:
    x = np.arange(450, dtype=np.float32)
    enc = codec.encode_vector(x, codec.Codec.LZ4, chunk_elems=200)
    data = encode_frame(kind, {"t": 1}, vector=enc.desc) + b"".join(bytes(c) for c in enc.chunks)
    frame, payload = parse_frame(data, SMALL)
    assert frame.vector == enc.desc and frame.payload_len == len(payload)
    out = np.empty_like(x)
    codec.decode_vector_into((frame.vector, _split(payload, frame.vector.sizes)), out)
    assert np.array_equal(out, x)


def _split(payload: memoryview, sizes: tuple[int, ...]) -> list[memoryview]:
    out, pos = [], 0
    for s in sizes:
        out.append(payload[pos:pos + s])
        pos += s
    return out


def test_reader_parses_many_frames_in_any_split() -> None:
    data = b"".join(encode_frame(Kind.EVENT, {"n": i}) for i in range(50))
    for step in (1, 7, 64, len(data)):
        frames: list = []
        reader = FrameReader(SMALL, frames.append)
        for i in range(0, len(data), step):
            reader.feed(data[i:i + step])
        assert [f.header["n"] for f in frames] == list(range(50))


def test_header_length_at_below_above_cap() -> None:
    for size, ok in ((SMALL.max_header_bytes - 1, True), (SMALL.max_header_bytes, True),
                     (SMALL.max_header_bytes + 1, False)):
        prefix = PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 0, size, 0)
        if ok:
            assert parse_prefix(prefix, SMALL) == (size, 0)
        else:
            with pytest.raises(LimitError):
                parse_prefix(prefix, SMALL)
    with pytest.raises(HeaderError):
        encode_frame(Kind.JOB, {"x": "a" * 2000}, limits=SMALL)


def test_payload_length_at_below_above_cap_refused_before_allocation() -> None:
    cap = SMALL.max_payload_bytes
    assert parse_prefix(PREFIX.pack(MAGIC, 1, 0, 0, 10, cap), SMALL) == (10, cap)
    assert parse_prefix(PREFIX.pack(MAGIC, 1, 0, 0, 10, cap - 1), SMALL) == (10, cap - 1)
    for declared in (cap + 1, 2**64 - 1):
        reader = FrameReader(SMALL, lambda f: None)
        with pytest.raises(LimitError):  # refused from the 20-byte prefix alone: nothing else was sent
            reader.feed(PREFIX.pack(MAGIC, 1, 0, 0, 10, declared))


def _desc(n: int, chunk: int, sizes: list[int] | None = None, dtype: str = "float32", codec_name: str = "none") -> dict:
    nchunks = -(-n // chunk)
    if sizes is None:
        sizes = [4 * min(chunk, n - k * chunk) for k in range(nchunks)]
    return {"dtype": dtype, "n": n, "codec": codec_name, "chunk": chunk, "sizes": sizes}


def _vec_frame(desc: dict, limits: Limits = SMALL):
    payload = sum(s for s in desc["sizes"] if type(s) is int)
    return codec.VectorDesc.from_wire(desc, payload, limits)


def test_vector_counts_at_below_above_cap() -> None:
    assert _vec_frame(_desc(1000, 200)).n == 1000  # elems at cap, chunks 5
    assert _vec_frame(_desc(999, 200)).n == 999
    with pytest.raises(LimitError):
        _vec_frame(_desc(1001, 200))
    assert _vec_frame(_desc(800, 100)).nchunks == 8  # chunks at cap
    assert _vec_frame(_desc(700, 100)).nchunks == 7
    with pytest.raises(LimitError):
        _vec_frame(_desc(900, 100))
    assert _vec_frame(_desc(200, 200)).chunk_elems == 200  # chunk elems at cap
    with pytest.raises(LimitError):
        _vec_frame(_desc(201, 201))


def test_container_items_at_and_above_cap() -> None:
    n = SMALL.max_container_items
    assert parse_frame(_raw({"k": "job", "h": {"l": list(range(n))}}), SMALL)[0].header["l"] == list(range(n))
    with pytest.raises(FrameError):
        parse_frame(_raw({"k": "job", "h": {"l": list(range(n + 1))}}), SMALL)


@pytest.mark.parametrize("bad", [
    _desc(10, 5, dtype="float64"), _desc(10, 5, dtype="object"), _desc(10, 5, codec_name="pickle"),
    _desc(10, 5, sizes=[20]), _desc(10, 5, sizes=[20, 21]), _desc(10, 5, sizes=[20, "20"]),
    {**_desc(10, 5), "extra": 1}, _desc(-1, 5, sizes=[]), {**_desc(10, 5, sizes=[]), "chunk": 0},
    _desc(10, 5, sizes=[3, 3], codec_name="lz4"), _desc(10, 5, sizes=[200, 20], codec_name="zstd"),
])
def test_bad_vector_descriptors_are_refused(bad: dict) -> None:
    with pytest.raises(ProtocolError):
        _vec_frame(bad)


@pytest.mark.parametrize("data", [
    b"", b"SHL", b"HTTP/1.1 200 OK\r\n\r\n", b"\x00" * 40, MAGIC + b"\x02" + b"\x00" * 15,
    PREFIX.pack(MAGIC, 1, 1, 0, 5, 0) + b"\x80" * 5, PREFIX.pack(MAGIC, 1, 0, 0, 0, 0),
])
def test_garbage_prefixes(data: bytes) -> None:
    with pytest.raises(FrameError):
        parse_frame(data, SMALL)


def test_truncated_frames_wait_then_complete() -> None:
    data = encode_frame(Kind.JOB, HEADER)
    for cut in range(len(data)):
        with pytest.raises(FrameError):
            parse_frame(data[:cut], SMALL)
        assert _collect(data[:cut]) == []  # the reader just waits for more
    with pytest.raises(FrameError):
        parse_frame(data + b"\x00", SMALL)


@pytest.mark.parametrize("obj", [
    [1, 2], {"k": "nope", "h": {}}, {"k": 3}, {"k": "job", "h": []}, {"k": "job", "x": 1},
    {"k": "job", "i": 0}, {"k": "job", "i": -5}, {"k": "job", "r": "7"}, {"k": "job", "h": {1: 2}},
    {"k": "job", "h": {"t": msgpack.ExtType(1, b"x")}}, {"k": "job", "h": {"t": msgpack.Timestamp(1)}},
    {"k": "job", "v": _desc(4, 4)}, {"k": "job", "h": {"d": _nested(40)}},
])
def test_non_plain_or_malformed_headers_are_refused(obj: object) -> None:
    with pytest.raises(FrameError):
        parse_frame(_raw(obj), SMALL)


def test_bad_utf8_and_trailing_msgpack_are_refused() -> None:
    head = msgpack.packb({"k": "job"}) + b"\xc0"
    with pytest.raises(FrameError):
        parse_frame(PREFIX.pack(MAGIC, 1, 0, 0, len(head), 0) + head)
    head = b"\x81\xa1k\xa3j\xffb"
    with pytest.raises(FrameError):
        parse_frame(PREFIX.pack(MAGIC, 1, 0, 0, len(head), 0) + head)


def test_payload_without_descriptor_refused() -> None:
    with pytest.raises(FrameError):
        parse_frame(_raw({"k": "vector"}, b"abcd"), SMALL)


@pytest.mark.parametrize("header", [{"t": (1, 2)}, {"t": np.float32(1)}, {"t": Kind.JOB}, {"t": object()},
                                    {1: "int key"}, "not a dict"])
def test_sending_non_plain_headers_raises_header_error(header: object) -> None:
    with pytest.raises(HeaderError):
        encode_frame(Kind.JOB, header)  # type: ignore[arg-type]


def test_limits_validate() -> None:
    with pytest.raises(ValueError):
        Limits(max_chunks=0)
    with pytest.raises(ValueError):
        Limits(max_header_bytes=100, handshake_header_bytes=200)
    assert struct.calcsize("<4sBBHIQ") == PREFIX_SIZE == 20
