"""The digest both sides vote on: BLAKE3-256 over a vector's raw float32 bytes.

Agents send the digest of each file gradient; the PS votes on digests and checks every fetched payload against the
winning one. The digest is always of the raw little-endian float32 bytes, never of compressed bytes (blosc2 output
differs run to run with several threads). BLAKE3 is a cryptographic hash (an adversary cannot forge collisions, unlike
xxhash or CRC) and measured 4.1 GB/s single-threaded on 44.7 MB here, against 1.24 GB/s for SHA-256 and 0.44 GB/s for
BLAKE2b, so hashing stays off the critical path.
"""
from __future__ import annotations

from collections.abc import Iterable

import blake3

#: Name carried in the JOB spec so both sides agree on the algorithm.
DIGEST_NAME = "blake3-256"
DIGEST_SIZE = 32


class StreamingDigest:
    """Incremental digest: feed raw chunks in order as they are decoded, then :meth:`digest`."""

    __slots__ = ("_hasher",)

    def __init__(self) -> None:
        self._hasher = blake3.blake3()

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hasher.update(chunk)

    def digest(self) -> bytes:
        return self._hasher.digest(length=DIGEST_SIZE)


def digest_bytes(data: bytes | bytearray | memoryview, *, threads: int = 1) -> bytes:
    """BLAKE3-256 of ``data``, a byte buffer (pass a float32 array as ``memoryview(arr).cast("B")``: blake3 refuses
    buffers whose items are not bytes). ``threads`` > 1 hashes large inputs in parallel (same result)."""
    max_threads = blake3.blake3.AUTO if threads > 1 else 1
    return blake3.blake3(data, max_threads=max_threads).digest(length=DIGEST_SIZE)


def digest_chunks(chunks: Iterable[bytes | bytearray | memoryview]) -> bytes:
    """Digest of the concatenation of ``chunks`` (equal to :func:`digest_bytes` of the joined bytes)."""
    hasher = StreamingDigest()
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.digest()
