"""The vote digest: deterministic, chunking-invariant, sensitive to every bit."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.digest import DIGEST_SIZE, digest_bytes, digest_chunks


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=4096), st.lists(st.integers(0, 4096), max_size=5))
def test_chunked_equals_whole(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert digest_chunks(chunks) == digest_bytes(data)
    assert len(digest_bytes(data)) == DIGEST_SIZE


def test_threads_do_not_change_digest_and_one_bit_does() -> None:
    x = np.random.default_rng(1).standard_normal(300_000).astype(np.float32)
    d1 = digest_bytes(memoryview(x).cast("B"))
    assert digest_bytes(memoryview(x).cast("B"), threads=2) == d1
    y = x.copy()
    y.view(np.uint32)[12345] ^= 1
    assert digest_bytes(memoryview(y).cast("B")) != d1
