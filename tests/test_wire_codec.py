"""Vector chunking: round trips for every codec, digest = digest of the raw bytes, hostile chunks refused."""
from __future__ import annotations

import array

import blosc2
import numpy as np
import pytest

from wire.codec import (
    Codec,
    EncodedVector,
    Shuffle,
    VectorDesc,
    check_dest,
    decode_vector_into,
    encode_vector,
    vector_digest,
)
from wire.digest import digest_bytes
from wire.errors import VectorError

X = np.random.default_rng(4).standard_normal(10_001).astype(np.float32)


@pytest.mark.parametrize("codec", list(Codec))
@pytest.mark.parametrize("shuffle", list(Shuffle))
def test_round_trip_and_digest(codec: Codec, shuffle: Shuffle) -> None:
    enc = encode_vector(X, codec, 5, chunk_elems=4096, shuffle=shuffle)
    assert enc.desc.nchunks == 3 and enc.desc.n == X.size
    out = np.full_like(X, np.nan)
    assert decode_vector_into(enc, out) == vector_digest(X) == digest_bytes(X.tobytes())
    assert out.tobytes() == X.tobytes()


def test_empty_vector() -> None:
    enc = encode_vector(np.empty(0, np.float32), Codec.ZSTD)
    assert enc.desc.sizes == ()
    assert decode_vector_into(enc, np.empty(0, np.float32)) == digest_bytes(b"")


@pytest.mark.parametrize("src", [np.zeros(4, np.float64), np.zeros((2, 2), np.float32), np.zeros(8, np.float32)[::2],
                                 np.zeros(4, np.int32), b"abcd", 3])
def test_sender_refuses_non_float32_vectors(src: object) -> None:
    with pytest.raises(VectorError):
        encode_vector(src)


def test_array_module_float32_accepted() -> None:
    enc = encode_vector(array.array("f", [1.0, 2.0]), Codec.NONE)
    out = array.array("f", [0.0, 0.0])
    decode_vector_into(enc, out)
    assert list(out) == [1.0, 2.0]


@pytest.mark.parametrize("dest", [np.empty(10_000, np.float32), np.empty(10_002, np.float32),
                                  np.empty(10_001, np.float64), np.empty((1, 10_001), np.float32)])
def test_wrong_destination_shape_or_dtype(dest: np.ndarray) -> None:
    enc = encode_vector(X, Codec.LZ4)
    with pytest.raises(VectorError):
        decode_vector_into(enc, dest)


def test_read_only_destination_refused() -> None:
    enc = encode_vector(X, Codec.NONE)
    dest = np.empty_like(X)
    dest.flags.writeable = False
    with pytest.raises(VectorError):
        check_dest(enc.desc, dest)


def _replace(enc: EncodedVector, k: int, chunk: bytes) -> tuple[VectorDesc, list]:
    chunks = list(enc.chunks)
    chunks[k] = chunk
    sizes = list(enc.desc.sizes)
    sizes[k] = len(chunk)
    return VectorDesc(enc.desc.n, enc.desc.codec, enc.desc.chunk_elems, tuple(sizes)), chunks


def test_corrupt_or_lying_blosc_chunks_raise_vector_error() -> None:
    enc = encode_vector(X, Codec.ZSTD, chunk_elems=4096)
    good = bytes(enc.chunks[0])
    other = blosc2.compress2(np.zeros(100, np.float32), typesize=4)  # decodes to the wrong size
    for bad in (b"\x00" * len(good), good[:16] + b"\xff" * (len(good) - 16), other, good[:-1]):
        with pytest.raises(VectorError):
            decode_vector_into(_replace(enc, 0, bad), np.empty_like(X))


def test_bad_codec_parameters() -> None:
    with pytest.raises(ValueError):
        encode_vector(X, Codec.LZ4, 10)
    with pytest.raises(ValueError):
        encode_vector(X, "snappy")
    with pytest.raises(ValueError):
        encode_vector(X, chunk_elems=0)
