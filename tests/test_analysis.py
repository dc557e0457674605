"""Exact worst case: against brute-force enumeration, hand-known cases, golden values, and the time limit."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzantine.analysis import analyze, claim1_gamma, default_byzantine_range, distorted, spectrum, worst_case
from byzantine.errors import AnalysisError
from byzantine.placement import Placement, Scheme, build_placement


def brute_force(p: Placement, q: int) -> tuple[int, tuple[int, ...]]:
    """The largest number of distorted files over all q-sets, and the first such set in lexicographic order."""
    if q == 0:
        return 0, ()
    H = p.biadjacency().astype(np.int16)
    combos = np.array(list(itertools.combinations(range(p.K), q)), dtype=np.int64).reshape(-1, q)
    counts = np.zeros((len(combos), p.f), np.int16)
    for column in range(q):
        counts += H[combos[:, column]]
    values = (counts >= p.r_prime).sum(axis=1)
    best = int(np.argmax(values))
    return int(values[best]), tuple(int(w) for w in combos[best])


SMALL = [("mols", 15, 3, None, range(0, 16)), ("rama_one", 15, 3, None, range(1, 10)),
         ("rama_two", 9, 3, None, range(1, 10)), ("rama_two", 9, 3, 6, range(1, 10)),
         ("detox", 15, 3, None, range(1, 9)), ("maj_vote", 15, 5, None, range(1, 9)),
         ("baseline", 8, 1, None, range(1, 9)), ("mols", 21, 3, None, range(1, 7)),
         ("rama_two", 25, 5, None, range(1, 6)), ("mols", 35, 5, None, range(1, 5))]


@pytest.mark.parametrize("scheme,K,r,m,qs", SMALL, ids=[f"{c[0]}-K{c[1]}-r{c[2]}-m{c[3]}" for c in SMALL])
def test_matches_brute_force_value_and_smallest_set(scheme: str, K: int, r: int, m: int | None, qs: range) -> None:
    p = build_placement(scheme, K, r, m)
    for q in qs:
        wc = worst_case(p, q)
        assert wc.exact and wc.upper_bound == wc.c_max and wc.q == q
        assert (wc.c_max, wc.worst_set) == brute_force(p, q), f"q={q}"
        assert distorted(p, wc.worst_set) == wc.c_max


@st.composite
def random_placements(draw: st.DrawFn) -> Placement:
    """Irregular placements with no structure: every file gets r distinct random holders."""
    K = draw(st.integers(3, 9))
    r = draw(st.sampled_from([1, 3, 5]).filter(lambda x: x <= K))
    f = draw(st.integers(1, 12))
    holders = [tuple(sorted(draw(st.permutations(range(K)))[:r])) for _ in range(f)]
    worker_files = tuple(tuple(i for i in range(f) if k in holders[i]) for k in range(K))
    l = max(len(files) for files in worker_files)  # noqa: E741 (the paper's l: files per worker)
    return Placement(Scheme.BASELINE, K, f, l, r, worker_files, tuple(holders))


@settings(max_examples=60, deadline=None)
@given(random_placements(), st.data())
def test_random_placements_match_brute_force(p: Placement, data: st.DataObject) -> None:
    q = data.draw(st.integers(1, p.K))
    wc = worst_case(p, q)
    assert wc.exact
    assert (wc.c_max, wc.worst_set) == brute_force(p, q)


def test_mols_k35_golden_values() -> None:
    """Computed by an independent exhaustive C enumeration over all C(35, q) sets."""
    p = build_placement("mols", 35, 5)
    golden = {5: (2, (0, 1, 7, 8, 32)), 6: (4, (0, 1, 7, 10, 20, 21)), 7: (5, (0, 1, 2, 7, 8, 14, 24)),
              8: (8, (0, 1, 7, 9, 18, 20, 28, 33)), 9: (10, (0, 7, 8, 10, 19, 21, 23, 24, 31)),
              10: (11, (0, 1, 2, 3, 7, 14, 17, 24, 32, 33))}
    for q, expected in golden.items():
        wc = worst_case(p, q)
        assert (wc.c_max, wc.worst_set) == expected


@pytest.mark.parametrize("scheme,K,r", [("detox", 21, 3), ("maj_vote", 25, 5), ("detox", 9, 9)])
def test_detox_by_hand(scheme: str, K: int, r: int) -> None:
    """Groups are disjoint: q workers win floor(q/r') whole groups, at most K/r."""
    p = build_placement(scheme, K, r)
    for q in range(K + 1):
        assert worst_case(p, q).c_max == min(q // p.r_prime, K // r)


def test_baseline_and_mols_by_hand() -> None:
    assert [worst_case(build_placement("baseline", 12, 1), q).c_max for q in range(13)] == list(range(13))
    for K, r in ((15, 3), (21, 3), (33, 3)):
        p = build_placement("mols", K, r)
        assert worst_case(p, 2).c_max == 1, "two lines of different directions meet in one point"
        assert worst_case(p, 2).worst_set == (0, p.l), "the smallest such pair: worker 0 and the first of class 2"
        if K < 33:
            assert worst_case(p, 2 * p.l).c_max == p.f, "two whole classes give every file 2 of its 3 copies"
    p = build_placement("mols", 35, 5)
    assert worst_case(p, 2).c_max == 0 and worst_case(p, 3).c_max == 1


def test_claim1_gamma_bounds_c_max_and_matches_paper_formula() -> None:
    for scheme, K, r in (("mols", 15, 3), ("mols", 21, 3), ("rama_two", 25, 5), ("rama_one", 21, 3)):
        p = build_placement(scheme, K, r)
        mu1 = spectrum(p).mu1
        for q in default_byzantine_range(p):
            gamma = claim1_gamma(p, q, mu1)
            assert gamma is not None and worst_case(p, q).c_max <= gamma + 1e-9
    p = build_placement("mols", 15, 3)
    beta = (3 * 5 / 3) / (1 / 3 + (2 / 3) * 3 / 15)
    assert math.isclose(claim1_gamma(p, 3, 1 / 3), (15 - beta) / 1.0)
    assert claim1_gamma(build_placement("baseline", 5, 1), 2, 1.0) is None


@pytest.mark.parametrize("scheme,K,r,m", [("mols", 15, 3, None), ("mols", 35, 5, None), ("rama_two", 25, 5, None),
                                          ("rama_two", 25, 5, 10), ("rama_one", 21, 3, None)])
def test_spectrum_meets_the_ramanujan_bound(scheme: str, K: int, r: int, m: int | None) -> None:
    p = build_placement(scheme, K, r, m)
    spec = spectrum(p)
    assert math.isclose(spec.mu1, 1 / r)
    assert math.isclose(spec.sigma2, math.sqrt(p.l))
    assert spec.ramanujan == (math.sqrt(p.l) <= math.sqrt(p.l - 1) + math.sqrt(r - 1) + 1e-9)
    assert spec.ramanujan


def test_spectrum_of_detox_is_not_ramanujan() -> None:
    spec = spectrum(build_placement("detox", 15, 3))
    assert math.isclose(spec.mu1, 1.0) and not spec.ramanujan


def test_time_limit_is_honest() -> None:
    p = build_placement("mols", 35, 5)
    wc = worst_case(p, 16, time_limit=0.05)
    assert not wc.exact
    assert len(wc.worst_set) == 16 and list(wc.worst_set) == sorted(set(wc.worst_set))
    assert distorted(p, wc.worst_set) == wc.c_max
    assert wc.c_max <= 30 <= wc.upper_bound, "c_max(16) = 30 (exhaustive C enumeration) lies between the two"


def test_analyze_rows_and_json() -> None:
    p = build_placement("mols", 15, 3)
    result = analyze(p, [2, 3])
    doc = result.to_json()
    assert set(doc) == {"scheme", "K", "f", "l", "r", "mu1", "sigma2", "ramanujan", "rows"}
    assert (doc["scheme"], doc["K"], doc["f"], doc["l"], doc["r"]) == ("mols", 15, 25, 5, 3)
    row = doc["rows"][1]
    assert set(row) == {"q", "c_max", "exact", "upper_bound", "epsilon", "epsilon_baseline", "epsilon_frc",
                        "gamma", "worst_set"}
    assert row["q"] == 3 and row["c_max"] == 3 and row["worst_set"] == [0, 5, 11]
    assert math.isclose(row["epsilon"], 3 / 25) and math.isclose(row["epsilon_baseline"], 3 / 15)
    assert math.isclose(row["epsilon_frc"], (3 // 2) * 3 / 15)


def test_bad_q_is_an_analysis_error() -> None:
    p = build_placement("mols", 15, 3)
    for q in (-1, 16, 2.0, True):
        with pytest.raises(AnalysisError):
            worst_case(p, q)  # type: ignore[arg-type]
