"""Vectors on the wire: a flat float32 vector as a sequence of independently decodable chunks (pure, no sockets).

A vector of ``n`` float32 values is cut into chunks of ``chunk_elems`` values (the last may be shorter). With codec
``none`` a chunk is its raw little-endian bytes; otherwise it is one blosc2 chunk (typesize 4, byte shuffle or
bitshuffle, LZ4 or ZSTD at a level), so the receiver can decompress chunk k into its slice of a preallocated
destination while chunk k+1 is still arriving. The descriptor (:class:`VectorDesc`) travels in the frame header and is
validated against :class:`wire.frames.Limits` before anything is allocated. Only ``blosc2.compress2`` /
``decompress2`` are used: never blosc2's ``pack_*`` helpers (they may unpickle).
"""
from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wire.digest import StreamingDigest, digest_bytes
from wire.errors import LimitError, VectorError

if TYPE_CHECKING:
    from wire.frames import Limits


@functools.cache
def _blosc2() -> Any:
    """blosc2, imported on first use: importing it costs ~1.5 s of CPU (it pulls in httpx and numexpr), which every
    PS and agent process would pay at start-up although the default codec, ``none``, never calls it."""
    import blosc2

    blosc2.set_releasegil(True)  # or every compress stalls the event loop (see ARCHITECTURE.md)
    return blosc2


#: Whitelisted element types: name on the wire -> item size.
DTYPES = {"float32": 4}
ITEMSIZE = 4
DEFAULT_CHUNK_ELEMS = 1 << 20  # 4 MiB raw chunks: 1-16 MiB chunks are fastest for blosc2 here
_MIN_BLOSC_CHUNK = 16  # a blosc2 chunk header is at least this long


class Codec(str, enum.Enum):
    """How vector chunks are encoded; the value is the CLI/JOB name."""

    NONE = "none"
    LZ4 = "lz4"
    ZSTD = "zstd"


class Shuffle(str, enum.Enum):
    """The blosc2 filter applied before the codec (ignored by ``none``)."""

    BYTE = "shuffle"
    BIT = "bitshuffle"


_BLOSC_CODECS = {Codec.LZ4: "LZ4", Codec.ZSTD: "ZSTD"}  # names in blosc2.Codec
_BLOSC_FILTERS = {Shuffle.BYTE: "SHUFFLE", Shuffle.BIT: "BITSHUFFLE"}  # names in blosc2.Filter


@dataclass(frozen=True)
class VectorDesc:
    """What a frame declares about its vector payload: ``n`` float32 values in chunks of ``chunk_elems``,
    chunk k being ``sizes[k]`` bytes on the wire."""

    n: int
    codec: Codec
    chunk_elems: int
    sizes: tuple[int, ...]
    dtype: str = "float32"

    @property
    def nchunks(self) -> int:
        return len(self.sizes)

    @property
    def nbytes(self) -> int:
        """Raw (decoded) size in bytes."""
        return self.n * ITEMSIZE

    def raw_range(self, k: int) -> tuple[int, int]:
        """Byte range of chunk ``k`` in the decoded vector."""
        start = k * self.chunk_elems * ITEMSIZE
        return start, min(start + self.chunk_elems * ITEMSIZE, self.nbytes)

    def to_wire(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "n": self.n, "codec": self.codec.value, "chunk": self.chunk_elems,
                "sizes": list(self.sizes)}

    @classmethod
    def from_wire(cls, obj: Any, payload_len: int, limits: Limits) -> VectorDesc:
        """Validate a peer's descriptor: whitelisted dtype, every count and size within limits and consistent."""
        if type(obj) is not dict or obj.keys() != {"dtype", "n", "codec", "chunk", "sizes"}:
            raise VectorError("malformed vector descriptor")
        if obj["dtype"] not in DTYPES:
            raise VectorError(f"dtype {obj['dtype']!r} not allowed")
        try:
            codec = Codec(obj["codec"])
        except ValueError:
            raise VectorError("unknown codec") from None
        n, chunk, sizes = obj["n"], obj["chunk"], obj["sizes"]
        if type(n) is not int or type(chunk) is not int or type(sizes) is not list:
            raise VectorError("malformed vector descriptor")
        if n < 0 or n > limits.max_vector_elems:
            raise LimitError(f"vector of {n} elements exceeds {limits.max_vector_elems}")
        if chunk < 1 or chunk > limits.max_chunk_elems:
            raise LimitError(f"chunk of {chunk} elements outside 1..{limits.max_chunk_elems}")
        nchunks = -(-n // chunk)
        if nchunks > limits.max_chunks:
            raise LimitError(f"{nchunks} chunks exceed {limits.max_chunks}")
        if len(sizes) != nchunks or any(type(s) is not int for s in sizes):
            raise VectorError("chunk sizes do not match the vector length")
        desc = cls(n, codec, chunk, tuple(sizes))
        for k, size in enumerate(desc.sizes):
            start, end = desc.raw_range(k)
            low, high = (end - start, end - start) if codec is Codec.NONE else (
                _MIN_BLOSC_CHUNK, end - start + _blosc2().MAX_OVERHEAD)
            if not low <= size <= high:
                raise VectorError(f"chunk {k} of {size} bytes outside {low}..{high}")
        if sum(desc.sizes) != payload_len:
            raise VectorError("chunk sizes do not add up to the payload length")
        return desc


@dataclass(frozen=True)
class EncodedVector:
    """A vector ready to send (to one peer or many): its descriptor and the chunk buffers, in order.

    With codec ``none`` the chunks are views of the source array (no copy): keep the array unchanged until every send
    of it has returned."""

    desc: VectorDesc
    chunks: tuple[bytes | memoryview, ...]


def as_float32_bytes(buf: Any, *, writable: bool = False) -> memoryview:
    """A byte view of a 1-D C-contiguous float32 buffer (numpy array, ``array('f')``...); :class:`VectorError` if
    not."""
    try:
        view = memoryview(buf)
    except TypeError:
        raise VectorError(f"{type(buf).__name__} is not a buffer") from None
    if view.format not in ("f", "<f", "=f") or view.itemsize != ITEMSIZE:
        raise VectorError(f"dtype must be float32, got buffer format {view.format!r}")
    if view.ndim != 1 or not view.c_contiguous:
        raise VectorError("vector must be 1-D and contiguous")
    if writable and view.readonly:
        raise VectorError("destination is read-only")
    return view.cast("B")


def _check_level(codec: Codec, level: int) -> None:
    if type(level) is not int or not 0 <= level <= 9:
        raise ValueError(f"compression level must be 0..9, got {level!r}")


def encode_vector(src: Any, codec: Codec | str = Codec.LZ4, level: int = 1, *,
                  chunk_elems: int = DEFAULT_CHUNK_ELEMS, shuffle: Shuffle | str = Shuffle.BYTE,
                  nthreads: int | None = None) -> EncodedVector:
    """Cut a float32 vector into chunks and compress each (blocking; run it in an executor from async code)."""
    codec, shuffle = Codec(codec), Shuffle(shuffle)
    _check_level(codec, level)
    if type(chunk_elems) is not int or chunk_elems < 1:
        raise ValueError("chunk_elems must be a positive int")
    raw = as_float32_bytes(src)
    n = len(raw) // ITEMSIZE
    step = chunk_elems * ITEMSIZE
    pieces: list[bytes | memoryview] = [raw[i:i + step] for i in range(0, len(raw), step)]
    if codec is Codec.NONE:
        chunks: list[bytes | memoryview] = pieces
    else:
        blosc2 = _blosc2()
        kwargs: dict[str, Any] = {"codec": blosc2.Codec[_BLOSC_CODECS[codec]], "clevel": level,
                                  "typesize": ITEMSIZE, "filters": [blosc2.Filter[_BLOSC_FILTERS[shuffle]]]}
        if nthreads is not None:
            kwargs["nthreads"] = nthreads
        chunks = [blosc2.compress2(piece, **kwargs) for piece in pieces]
    return EncodedVector(VectorDesc(n, codec, chunk_elems, tuple(len(c) for c in chunks)), tuple(chunks))


def decode_chunk_into(desc: VectorDesc, k: int, chunk: bytes | bytearray | memoryview, dest: memoryview) -> None:
    """Decode chunk ``k`` (exactly ``desc.sizes[k]`` bytes) into its slice of ``dest`` (the whole vector's bytes)."""
    start, end = desc.raw_range(k)
    if len(chunk) != desc.sizes[k]:
        raise VectorError(f"chunk {k} has {len(chunk)} bytes, declared {desc.sizes[k]}")
    if desc.codec is Codec.NONE:
        dest[start:end] = chunk
        return
    try:
        nbytes, cbytes, _ = _blosc2().get_cbuffer_sizes(chunk)
    except Exception:
        raise VectorError(f"chunk {k} is not a blosc2 chunk") from None
    if nbytes != end - start or cbytes != len(chunk):
        raise VectorError(f"chunk {k} declares {nbytes}/{cbytes} bytes, expected {end - start}/{len(chunk)}")
    try:
        _blosc2().decompress2(chunk, dst=dest[start:end])
    except Exception as exc:
        raise VectorError(f"chunk {k} does not decompress: {exc}") from None


def vector_digest(array: Any) -> bytes:
    """BLAKE3-256 of a float32 vector's raw bytes (what agents send in DIGESTS and the PS checks payloads against)."""
    return digest_bytes(as_float32_bytes(array))


def check_dest(desc: VectorDesc, dest: Any) -> memoryview:
    """The byte view of ``dest`` after checking it is a writable float32 vector of exactly ``desc.n`` values."""
    view = as_float32_bytes(dest, writable=True)
    if len(view) != desc.nbytes:
        raise VectorError(f"peer sent {desc.n} values, receiver expects {len(view) // ITEMSIZE}")
    return view


def decode_vector_into(encoded: EncodedVector | tuple[VectorDesc, Sequence[Any]], dest: Any, *,
                       digest: bool = True) -> bytes | None:
    """Decode all chunks into ``dest`` (blocking); returns the BLAKE3 digest of the raw bytes if ``digest``."""
    desc, chunks = (encoded.desc, encoded.chunks) if isinstance(encoded, EncodedVector) else encoded
    view = check_dest(desc, dest)
    if len(chunks) != desc.nchunks:
        raise VectorError("wrong number of chunks")
    hasher = StreamingDigest() if digest else None
    for k, chunk in enumerate(chunks):
        decode_chunk_into(desc, k, chunk, view)
        if hasher is not None:
            start, end = desc.raw_range(k)
            hasher.update(view[start:end])
    return hasher.digest() if hasher is not None else None
