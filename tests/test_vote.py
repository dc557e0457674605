"""The per-file majority vote: golden cases, the NaN re-vote flow, a real placement, properties and errors."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzantine.errors import VoteError
from byzantine.placement import build_placement
from byzantine.vote import vote_digests, vote_tolerant
from wire.digest import digest_bytes

HOLDERS = [(0, 1, 2), (1, 2, 3), (2, 3, 4), (0, 3, 4), (0, 1, 4)]


def test_golden_exact_vote() -> None:
    replies = [
        {0: b"a", 1: b"a", 2: b"a"},  # unanimous
        {1: b"b", 2: b"b", 3: b"x"},  # 2 of 3: worker 3 disagrees
        {2: b"c", 3: b"d", 4: b"e"},  # no majority: dropped, nobody blamed
        {0: b"f", 4: b"f"},           # worker 3 absent, 2 of 3 still win
        {0: b"g"},                    # 1 of 3: dropped
    ]
    res = vote_digests(HOLDERS, replies, 2)
    assert res.winners == (b"a", b"b", None, b"f", None)
    assert res.files_won == (0, 1, 3) and res.files_dropped == (2, 4)
    assert res.files[1].holders == (1, 2) and res.files[1].disagreeing == (3,)
    assert res.files[3].absent == (3,) and res.files[4].absent == (1, 4)
    assert res.disagreeing == (3,)
    assert res.disagreement_counts() == {3: 1}


def test_invalid_digest_never_wins_and_its_senders_disagree() -> None:
    # The runtime learns that a payload is non-finite only after fetching it, then votes again.
    replies = [{0: b"nan", 1: b"nan", 2: b"ok"}, {1: b"v", 2: b"v", 3: b"nan"}] + [{}] * 3
    first = vote_digests(HOLDERS, replies, 2)
    assert first.winners[0] == b"nan"
    again = vote_digests(HOLDERS, replies, 2, invalid={b"nan"})
    assert again.winners[:2] == (None, b"v")
    assert again.files[0].disagreeing == (0, 1) and again.files[1].disagreeing == (3,)
    assert again.disagreeing == (0, 1, 3)
    excluded = vote_digests(HOLDERS, replies, 2, excluded={3})
    assert excluded.files[1].absent == (3,) and excluded.files[1].disagreeing == ()


def test_real_placement_real_digests() -> None:
    placement = build_placement("mols", 15, 3)  # f = 25 files, r = 3, r' = 2
    rng = np.random.default_rng(0)
    grads = rng.standard_normal((placement.f, 1000)).astype(np.float32)
    honest = [digest_bytes(memoryview(g).cast("B")) for g in grads]
    attack = digest_bytes(memoryview(-100 * grads[0]).cast("B"))
    byzantine = {0, 1}
    replies = [{w: (attack if w in byzantine else honest[i]) for w in ws}
               for i, ws in enumerate(placement.file_workers)]
    res = vote_digests(placement, replies)
    assert res.r_prime == 2
    for i, ws in enumerate(placement.file_workers):
        bad = len(byzantine & set(ws))
        assert res.winners[i] == (attack if bad >= 2 else honest[i])
        assert res.files[i].disagreeing == tuple(sorted(set(ws) - byzantine if bad >= 2 else byzantine & set(ws)))
    assert res.files_dropped == ()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.sampled_from([b"p", b"q", b"r"])), min_size=5, max_size=5),
                min_size=1, max_size=6))
def test_vote_properties(table: list[list[bytes | None]]) -> None:
    holders = [tuple(range(5))] * len(table)
    replies = [{w: d for w, d in enumerate(row) if d is not None} for row in table]
    res = vote_digests(holders, replies, 3)
    for fv, row in zip(res.files, table, strict=False):
        values = [d for d in row if d is not None]
        if fv.won:
            assert values.count(fv.winner) >= 3
            assert set(fv.holders) | set(fv.disagreeing) | set(fv.absent) == set(range(5))
            assert not set(fv.holders) & set(fv.disagreeing)
        else:
            assert all(values.count(v) < 3 for v in values) and fv.holders == () and fv.disagreeing == ()


@pytest.mark.parametrize(("holders", "replies", "r_prime", "needle"), [
    (HOLDERS, [{}] * 4, 2, "replies cover 4 files but the placement has f=5"),
    (HOLDERS, [{7: b"a"}] + [{}] * 4, 2, "file 0: replies from workers [7] that do not hold it"),
    (HOLDERS, [{0: "a"}] + [{}] * 4, 2, "worker 0 sent a str, not a bytes digest"),
    (HOLDERS, [{}] * 5, 1, "r'=1 is not a strict majority of the r=3 holders of file 0"),
    (HOLDERS, [{}] * 5, None, "r_prime is required"),
    ([(0, 0, 1)], [{}], 2, "lists a holder twice"),
])
def test_vote_errors(holders, replies, r_prime, needle: str) -> None:
    with pytest.raises(VoteError) as err:
        vote_digests(holders, replies, r_prime)
    assert needle in str(err.value)


def test_tolerant_vote() -> None:
    rng = np.random.default_rng(1)
    g = rng.standard_normal(50_000).astype(np.float32)
    near = (g * (1 + 1e-7 * rng.standard_normal(g.size))).astype(np.float32)  # another CPU's rounding
    far = (g + 0.1).astype(np.float32)
    nan = g.copy()
    nan[5] = np.nan
    holders = [(0, 1, 2), (0, 1, 2), (0, 1, 2), (0, 1, 2)]
    replies = [{0: g, 1: near, 2: far}, {0: nan, 1: nan, 2: g}, {0: far, 1: g}, {0: g, 1: far, 2: -g}]
    res = vote_tolerant(holders, replies, 2, rtol=1e-5)
    assert res.files[0].winner is g and res.files[0].holders == (0, 1) and res.files[0].disagreeing == (2,)
    assert res.files[1].winner is None and res.files[1].disagreeing == (0, 1)  # NaN never wins
    assert res.files_dropped == (1, 2, 3)
    strict = vote_tolerant(holders, replies, 2, rtol=0.0)
    assert strict.files[0].winner is None


def test_tolerant_vote_rejects_malformed_vectors() -> None:
    holders = [(0, 1, 2)]
    with pytest.raises(VoteError, match="expected a 1-D float32 vector"):
        vote_tolerant(holders, [{0: np.zeros(3)}], 2)
    with pytest.raises(VoteError, match="worker 1 sent length 4, others 3"):
        vote_tolerant(holders, [{0: np.zeros(3, np.float32), 1: np.zeros(4, np.float32)}], 2)
    with pytest.raises(VoteError, match="rtol and atol must be >= 0"):
        vote_tolerant(holders, [{}], 2, rtol=-1)
