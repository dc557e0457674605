"""The commit-then-sketch vote: exact recomputation, the two tails of the documented bounds, the vote, lie proofs."""
from __future__ import annotations

import math

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from byzantine import sketch as sk
from byzantine.errors import VoteError
from byzantine.sketch import (
    SketchParams,
    SketchReply,
    agree,
    check_payload,
    l2_norm,
    relative_spread,
    sketch,
    sketch_many,
    tie_key,
    vote_sketches,
)

PARAMS = SketchParams()
D = 3000  # small vectors: the bounds do not depend on d
TOL = 1e-3
HOLDERS = [(0, 1, 2), (1, 2, 3), (2, 3, 4)]


def _reference(x: np.ndarray, seed: bytes, params: SketchParams) -> np.ndarray:
    """The definition in the module docstring, written out coordinate by coordinate in pure numpy/Python order."""
    d, k, c = x.shape[0], params.rows, params.width
    n = -(-d // c)
    bits = sk.quantisation_bits(d, c)
    peak = float(np.max(np.abs(x)))
    s = 0 if peak == 0 else bits - math.frexp(peak)[1]
    padded = np.zeros(n * c)
    padded[:d] = x.astype(np.float64) * 2.0 ** s
    X = np.rint(padded).reshape(n, c)
    assert np.abs(X).max() <= 2 ** bits and n * 2 ** bits <= 2 ** 53
    xof = blake3.blake3(key=blake3.blake3(b"shield-sketch-v1" + seed).digest())
    stream = np.frombuffer(xof.digest(length=n * k // 8), np.uint8)
    G = 1.0 - 2.0 * np.unpackbits(stream, bitorder="little").reshape(n, k)
    out = np.zeros((k, c))
    for q in range(n):  # row by row, a different summation order from the blocked BLAS product
        out += np.outer(G[q], X[q])
    return out * 2.0 ** -s


def _reply(x: np.ndarray, seed: bytes, params: SketchParams = PARAMS) -> SketchReply:
    return SketchReply(sketch(x, seed, params), l2_norm(x))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v.astype(np.float64))


@pytest.mark.parametrize("d", [1, 31, 32, 1000, 4097 * 32 + 5])
def test_sketch_equals_its_definition_bit_for_bit_whatever_the_blocking(d: int,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(d)
    x = (rng.standard_normal(d) * rng.choice([1e-30, 1e-3, 1e3], size=d)).astype(np.float32)
    seed = bytes(range(32))
    ref = _reference(x, seed, PARAMS)
    assert np.array_equal(sketch(x, seed), ref)
    monkeypatch.setattr(sk, "_BLOCK_ROWS", 5)
    assert np.array_equal(sketch(x, seed), ref)
    many = sketch_many([x, np.zeros_like(x), -x], seed)
    assert np.array_equal(many[0], ref) and not many[1].any() and np.array_equal(many[2], -ref)


def test_sketch_depends_on_the_seed_and_refuses_bad_input() -> None:
    x = np.random.default_rng(0).standard_normal(500).astype(np.float32)
    assert not np.array_equal(sketch(x, b"a" * 32), sketch(x, b"b" * 32))
    with pytest.raises(VoteError, match="32 bytes"):
        sketch(x, b"short")
    with pytest.raises(VoteError, match="NaN or Inf"):
        sketch(np.array([1.0, np.nan], np.float32), b"a" * 32)
    with pytest.raises(VoteError, match="float32"):
        sketch(x.astype(np.float64), b"a" * 32)
    with pytest.raises(VoteError, match="differ in length"):
        sketch_many([x, x[:10]], b"a" * 32)


def test_documented_numbers() -> None:
    # docs/byzantine.md quotes these: k = 256, c = 32 -> 64 KiB per sketch, x = 0.265, y = 1.808, hiding 2.61 tol
    assert PARAMS.nbytes == 65536
    assert PARAMS.lower() == pytest.approx(0.2654, abs=1e-4)
    assert PARAMS.upper() == pytest.approx(1.8082, abs=1e-4)
    assert PARAMS.hiding() == pytest.approx(2.610, abs=1e-3)
    assert SketchParams(rows=64).hiding() == math.inf  # too few rows to promise 1e-10
    # the upper factor is a real Chernoff bound of chi^2_k / k: (y e^(1-y))^(k/2) = honest_p
    y = PARAMS.upper()
    assert (PARAMS.rows / 2) * (math.log(y) + 1 - y) == pytest.approx(math.log(PARAMS.honest_p))
    assert sk.quantisation_error(11_173_962) < 2e-7 and sk.quantisation_error(431_080) < 2e-9
    with pytest.raises(VoteError):
        SketchParams(rows=12)
    with pytest.raises(VoteError):
        SketchParams(accept_p=0.0)


def _noise(kind: str, rng: np.random.Generator, d: int, c: int) -> np.ndarray:
    """Shapes of difference vectors: dense, sparse, one column of the (n, c) layout, a block jump, rank one."""
    v = np.zeros(d)
    if kind == "dense":
        v = rng.standard_normal(d)
    elif kind == "sparse2":  # two opposite coordinates in one column: a 1/2 cancellation per Rademacher row
        i = int(rng.integers(0, d // c - 1)) * c + int(rng.integers(0, c))
        v[i], v[i + c] = 1.0, -1.0
    elif kind == "column":
        col = int(rng.integers(0, c))
        v[col::c] = rng.standard_normal(len(v[col::c]))
    elif kind == "block":  # like a BatchNorm parameter jump: a contiguous run of one value
        start = int(rng.integers(0, d - 64))
        v[start:start + 64] = 1.0
    elif kind == "rank1":
        n = -(-d // c)
        v = np.outer(rng.standard_normal(n), np.ones(c)).reshape(-1)[:d]
    return _unit(v)


KINDS = st.sampled_from(["dense", "sparse2", "column", "block", "rank1"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=KINDS, fraction=st.floats(0.0, 0.95), seed=st.binary(min_size=32, max_size=32),
       data_seed=st.integers(0, 2 ** 32 - 1))
def test_honest_noise_within_the_tolerance_always_agrees(kind: str, fraction: float, seed: bytes,
                                                         data_seed: int) -> None:
    rng = np.random.default_rng(data_seed)
    g = rng.standard_normal(D).astype(np.float32)
    norm = float(np.linalg.norm(g.astype(np.float64)))
    other = (g + fraction * TOL * norm * _noise(kind, rng, D, PARAMS.width)).astype(np.float32)
    a, b = _reply(g, seed), _reply(other, seed)
    assert agree(a, b, TOL) and agree(b, a, TOL)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=KINDS, factor=st.floats(1.02, 50.0), seed=st.binary(min_size=32, max_size=32),
       data_seed=st.integers(0, 2 ** 32 - 1))
def test_deviations_above_the_hiding_bound_are_caught(kind: str, factor: float, seed: bytes, data_seed: int) -> None:
    # Documented rate: caught except with probability <= accept_p = 1e-10 per pair; 60 examples x 5 shapes never miss.
    rng = np.random.default_rng(data_seed)
    g = rng.standard_normal(D).astype(np.float32)
    norm = float(np.linalg.norm(g.astype(np.float64)))
    deviation = factor * PARAMS.hiding() * TOL * norm * _noise(kind, rng, D, PARAMS.width)
    liar = (g + deviation).astype(np.float32)
    a, b = _reply(g, seed), _reply(liar, seed)
    assert not agree(a, b, TOL)
    # reporting a huge norm does not widen the tolerance (the smaller norm counts)
    assert not agree(a, SketchReply(b.sketch, 1e30), TOL)


def test_a_tight_spot_check_of_the_rate_just_above_the_hiding_bound() -> None:
    # 400 fresh seeds on the worst shape we know (two opposite coordinates in one column) at 1.02x the bound.
    rng = np.random.default_rng(7)
    g = rng.standard_normal(D).astype(np.float32)
    norm = float(np.linalg.norm(g.astype(np.float64)))
    liar = (g + 1.02 * PARAMS.hiding() * TOL * norm * _noise("sparse2", rng, D, PARAMS.width)).astype(np.float32)
    caught = sum(not agree(_reply(g, s), _reply(liar, s), TOL) for s in (rng.bytes(32) for _ in range(400)))
    assert caught == 400


def _replies(vectors: dict[int, np.ndarray], seed: bytes) -> dict[int, SketchReply]:
    return {w: _reply(v, seed) for w, v in vectors.items()}


def test_vote_groups_replicas_within_the_tolerance_and_blames_the_rest() -> None:
    rng = np.random.default_rng(1)
    seed = rng.bytes(32)
    g = [rng.standard_normal(D).astype(np.float32) for _ in range(3)]
    near = [(x + 0.3 * TOL * np.linalg.norm(x) * _unit(rng.standard_normal(D))).astype(np.float32) for x in g]
    far = (g[1] + 10 * PARAMS.hiding() * TOL * np.linalg.norm(g[1]) * _unit(rng.standard_normal(D))).astype(np.float32)
    replies = [
        _replies({0: g[0], 1: near[0], 2: g[0]}, seed),           # three honest replicas, two classes
        _replies({1: g[1], 2: near[1], 3: far}, seed),            # worker 3 deviates by 10x the bound
        {**_replies({2: g[2], 3: near[2]}, seed), 4: SketchReply(None)},  # 4's gradient was not finite
    ]
    res = vote_sketches(HOLDERS, replies, TOL, 2)
    assert all(res.winners[i] in res.files[i].holders for i in range(3))
    assert res.files[0].holders == (0, 1, 2) and res.files[0].disagreeing == ()
    assert res.files[1].holders == (1, 2) and res.files[1].disagreeing == (3,)
    assert res.files[2].holders == (2, 3) and res.files[2].disagreeing == (4,)
    # excluding the center (e.g. caught lying) moves the win to the next-best reply
    again = vote_sketches(HOLDERS, replies, TOL, 2, excluded={1})
    assert again.winners[1] is None and again.files[1].absent == (1,)
    assert vote_sketches(HOLDERS, replies, TOL, 2, excluded={0}).files[0].holders == (1, 2)
    # with the committed digests, ties go to the smallest hash of the digest keyed by the step's seed: not to a
    # digest ground small before the seed was revealed, and not to a worker id
    ground, other = b"\x00" * 32, b"\x77" * 32
    digests = [{0: other, 1: ground, 2: other}, {1: b"", 2: b"", 3: b""}, {2: b"", 3: b"", 4: b""}]
    wins = []
    for key in range(64):
        order_key = key.to_bytes(32, "big")
        winner = vote_sketches(HOLDERS, replies, TOL, 2, digests=digests, order_key=order_key).winners[0]
        expected = 1 if tie_key(order_key, ground, 1) < tie_key(order_key, other, 0) else 0
        assert winner == expected
        wins.append(winner == 1)
    assert 16 <= sum(wins) <= 48  # the ground digest wins about half the ties, like any other


def test_vote_without_majority_drops_the_file_and_blames_nobody_but_non_finite() -> None:
    rng = np.random.default_rng(2)
    seed = rng.bytes(32)
    spread = {w: rng.standard_normal(D).astype(np.float32) for w in (0, 1)}
    replies = [{**_replies(spread, seed), 2: SketchReply(None)}, {}, {}]
    res = vote_sketches(HOLDERS, replies, TOL, 2)
    assert res.winners[0] is None and res.files[0].disagreeing == (2,)
    assert res.files_dropped == (0, 1, 2)


def test_vote_refuses_malformed_replies() -> None:
    x = np.ones(D, np.float32)
    good = _reply(x, b"s" * 32)
    with pytest.raises(VoteError, match="not a SketchReply"):
        vote_sketches(HOLDERS, [{0: b"digest"}, {}, {}], TOL, 2)
    with pytest.raises(VoteError, match="float64"):
        vote_sketches(HOLDERS, [{0: SketchReply(good.sketch[:5], 1.0)}, {}, {}], TOL, 2)
    with pytest.raises(VoteError, match="norm"):
        vote_sketches(HOLDERS, [{0: SketchReply(good.sketch, math.nan)}, {}, {}], TOL, 2)
    with pytest.raises(VoteError, match="do not hold"):
        vote_sketches(HOLDERS, [{4: good}, {}, {}], TOL, 2)
    with pytest.raises(VoteError, match="tolerance"):
        vote_sketches(HOLDERS, [{}, {}, {}], -1.0, 2)


def test_check_payload_proves_a_lie_and_accepts_the_truth() -> None:
    rng = np.random.default_rng(3)
    seed = rng.bytes(32)
    g = rng.standard_normal(D).astype(np.float32)
    honest = _reply(g, seed)
    assert check_payload(g, honest, seed) is None
    bent = g.copy()
    top = int(np.argmax(np.abs(g)))  # A = 46 bits here: one float32 ulp of the largest entry is 2^22 steps
    bent[top] = np.nextafter(bent[top], np.float32(np.inf))
    assert "sketch differs" in check_payload(bent, honest, seed)
    big = (g + TOL * np.linalg.norm(g) * _unit(rng.standard_normal(D))).astype(np.float32)
    assert "sketch differs" in check_payload(big, honest, seed)  # sketched the honest value, committed another
    assert "norm" in check_payload(g, SketchReply(honest.sketch, honest.norm * 1.01), seed)
    assert "non-finite" in check_payload(g, SketchReply(None), seed)
    assert "cannot be sketched" in check_payload(np.full(D, np.inf, np.float32), honest, seed)


def test_relative_spread_estimates_the_distance_between_classes() -> None:
    rng = np.random.default_rng(4)
    seed = rng.bytes(32)
    g = rng.standard_normal(20000).astype(np.float32)
    other = (g + 1e-4 * np.linalg.norm(g) * _unit(rng.standard_normal(20000))).astype(np.float32)
    spread = relative_spread([_reply(g, seed), _reply(other, seed), SketchReply(None)])
    assert spread == pytest.approx(1e-4, rel=0.25)
    assert relative_spread([_reply(g, seed)]) == 0.0
