"""Placement: the combinatorial facts of every scheme, golden small cases, and errors that say what is valid."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from byzantine.errors import ByzantineConfigError, PlacementError
from byzantine.placement import SCHEME_ALIASES, Placement, Scheme, build_placement, is_prime, parse_scheme

# (scheme, K, r, rama_m, expected (f, l))
CONFIGS = [
    ("baseline", 7, 1, None, (7, 1)),
    ("detox", 15, 3, None, (5, 1)),
    ("maj_vote", 25, 5, None, (5, 1)),
    ("mols", 15, 3, None, (25, 5)),
    ("mols", 21, 3, None, (49, 7)),
    ("mols", 35, 5, None, (49, 7)),
    ("mols", 33, 3, None, (121, 11)),
    ("rama_one", 15, 3, None, (25, 5)),
    ("rama_one", 21, 3, None, (49, 7)),
    ("rama_one", 35, 5, None, (49, 7)),
    ("rama_two", 25, 5, None, (25, 5)),
    ("rama_two", 25, 5, 10, (50, 10)),
    ("rama_two", 9, 3, 6, (18, 6)),
]


def build(scheme: str, K: int, r: int, m: int | None) -> Placement:
    return build_placement(scheme, K, r, m)


@pytest.mark.parametrize("scheme,K,r,m,fl", CONFIGS)
def test_biregular_and_consistent(scheme: str, K: int, r: int, m: int | None, fl: tuple[int, int]) -> None:
    p = build(scheme, K, r, m)
    assert (p.K, p.r, (p.f, p.l)) == (K, r, fl)
    H = p.biadjacency()
    assert H.shape == (K, p.f) and H.dtype == np.uint8
    assert (H.sum(axis=1) == p.l).all(), "every worker holds exactly l files"
    assert (H.sum(axis=0) == p.r).all(), "every file has exactly r holders"
    for k, files in enumerate(p.worker_files):
        assert list(files) == sorted(files) and len(set(files)) == len(files)
        assert files == tuple(np.flatnonzero(H[k]))
    for i, workers in enumerate(p.file_workers):
        assert list(workers) == sorted(workers)
        assert workers == tuple(np.flatnonzero(H[:, i]))
    assert p.r_prime == (r + 1) // 2


@pytest.mark.parametrize("scheme,K,r,m,fl", [c for c in CONFIGS if c[0] in ("mols", "rama_one", "rama_two")])
def test_two_workers_share_at_most_one_file_per_copy(scheme: str, K: int, r: int, m: int | None,
                                                      fl: tuple[int, int]) -> None:
    """MOLS and the Ramanujan code: workers fall in classes of mutually disjoint workers, and two workers of
    different classes share exactly one file (exactly m/s files when rama_two repeats its blocks)."""
    p = build(scheme, K, r, m)
    H = p.biadjacency().astype(np.int64)
    shared = H @ H.T
    copies = 1 if m is None else m // r
    class_size = r if scheme == "rama_two" else p.l
    cls = np.arange(K) // class_size
    same = cls[:, None] == cls[None, :]
    off = ~np.eye(K, dtype=bool)
    assert (shared[same & off] == 0).all()
    assert (shared[~same] == copies).all()


@pytest.mark.parametrize("scheme,K,r,m,fl", [c for c in CONFIGS if c[0] in ("mols", "rama_one", "rama_two")])
def test_eigenvalue_structure(scheme: str, K: int, r: int, m: int | None, fl: tuple[int, int]) -> None:
    """A = H/sqrt(l*r): A A^T has eigenvalue 1 once, 1/r with multiplicity K - r, and 0 with multiplicity r - 1."""
    p = build(scheme, K, r, m)
    A = p.biadjacency().astype(float) / np.sqrt(p.l * p.r)
    eig = np.sort(np.linalg.eigvalsh(A @ A.T))[::-1]
    assert np.isclose(eig[0], 1.0) and not np.isclose(eig[1], 1.0)
    assert np.isclose(eig[1:K - r + 1], 1.0 / r).all()
    assert np.isclose(eig[K - r + 1:], 0.0, atol=1e-9).all()


def test_mols_golden_k15() -> None:
    """Worker k*l+s holds the cells of symbol s in L_(k+1)(i, j) = ((k+1)*i + j) mod 5, read row-major."""
    p = build_placement("mols", 15, 3)
    assert p.worker_files[0] == (0, 9, 13, 17, 21)       # L_1 = 0: (0,0) (1,4) (2,3) (3,2) (4,1)
    assert p.worker_files[5] == (0, 8, 11, 19, 22)       # L_2 = 0: (0,0) (1,3) (2,1) (3,4) (4,2)
    assert p.worker_files[14] == (4, 6, 13, 15, 22)      # L_3 = 4: (0,4) (1,1) (2,3) (3,0) (4,2)
    assert p.file_workers[0] == (0, 5, 10)
    for k in range(15):
        for i, j in ((divmod(x, 5)) for x in p.worker_files[k]):
            assert ((k // 5 + 1) * i + j) % 5 == k % 5


def test_ramanujan_golden() -> None:
    """Hand-derived from the original's P (P[a, b] = 1 iff b = a - 1 mod s) and B's block (i, j) = P^(i*j).

    Case 2, s = 3: worker i*s + a holds file j*s + b iff b = a - i*j (mod s). Case 1, s = 5, m = 3: worker j*s + b
    holds file i*s + a iff a = b + i*j (mod s)."""
    p = build_placement("rama_two", 9, 3)
    assert p.worker_files[0] == (0, 3, 6)     # slope 0, intercept 0
    assert p.worker_files[4] == (1, 3, 8)     # i=1, a=1: b = 1, 0, 2 for j = 0, 1, 2
    p1 = build_placement("rama_one", 15, 3)
    assert p1.worker_files[0] == (0, 5, 10, 15, 20)
    assert p1.worker_files[6] == (1, 7, 13, 19, 20)   # j=1, b=1: a = 1, 2, 3, 4, 0 for i = 0..4


def _original_biadjacency(s: int, m: int) -> np.ndarray:
    """B of the original's ``rama_groups`` from its definition: P[a, b] = 1 iff (b + 1) mod s == a, block row i and
    block column j of B hold P^(i*j); rows of B are Case 2's workers, columns its files (Case 1 uses B^T)."""
    P = np.array([[1 if (b + 1) % s == a else 0 for b in range(s)] for a in range(s)], dtype=np.int64)
    return np.block([[np.linalg.matrix_power(P, i * j) for j in range(m)] for i in range(s)]).astype(np.uint8)


@pytest.mark.parametrize("scheme,K,r,m,s", [
    ("rama_one", 15, 3, None, 5), ("rama_one", 21, 3, None, 7), ("rama_one", 35, 5, None, 7),
    ("rama_two", 9, 3, None, 3), ("rama_two", 25, 5, None, 5), ("rama_two", 25, 5, 10, 5),
])
def test_ramanujan_matches_the_original_numbering(scheme: str, K: int, r: int, m: int | None, s: int) -> None:
    """Every worker gets the same files as the original's worker of the same (0-based) rank, not a relabelling."""
    p = build_placement(scheme, K, r, m)
    if scheme == "rama_one":
        expected = _original_biadjacency(s, r).T
    else:
        expected = _original_biadjacency(s, m or s)
    assert (p.biadjacency() == expected).all()


def test_detox_groups_and_baseline() -> None:
    p = build_placement(Scheme.DETOX, 9, 3)
    assert p.file_workers == ((0, 1, 2), (3, 4, 5), (6, 7, 8))
    assert build_placement("maj_vote", 9, 3).file_workers == p.file_workers
    b = build_placement("baseline", 4, 1)
    assert b.worker_files == ((0,), (1,), (2,), (3,)) and (b.biadjacency() == np.eye(4, dtype=np.uint8)).all()


def test_aliases_and_names() -> None:
    for alias in ("draco-lite", "draco_lite"):
        assert parse_scheme(alias) is Scheme.DETOX and SCHEME_ALIASES[alias] is Scheme.DETOX
        assert build_placement(alias, 6, 3).scheme is Scheme.DETOX
    for s in Scheme:
        assert parse_scheme(s.value) is s and parse_scheme(s) is s


def test_frozen() -> None:
    p = build_placement("mols", 15, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.K = 3  # type: ignore[misc]


@pytest.mark.parametrize("args,fragment", [
    (("mols", 16, 3), "mols needs K = r*l with l prime and r <= l-1; K=16, r=3 gives l=5.33"),
    (("mols", 20, 5), "gives l=4"),
    (("mols", 25, 5), "r <= l-1"),
    (("mols", 14, 2), "odd replication"),
    (("detox", 10, 3), "K divisible by r"),
    (("detox", 8, 4), "odd replication"),
    (("baseline", 6, 3), "r = 1"),
    (("rama_one", 25, 5), "m = r < s"),
    (("rama_one", 12, 3), "s prime"),
    (("rama_two", 24, 5), "K = s^2"),
    (("rama_two", 81, 9), "not prime"),
    (("rama_two", 25, 5, 7), "multiple of s = 5"),
    (("rama_one", 15, 3, 5), "r = m"),
    (("mols", 15, 3, 3), "only to rama_two"),
    (("nope", 15, 3), "choose from baseline"),
    (("mols", 0, 3), "positive integer"),
    (("mols", 15, 0), "positive integer"),
])
def test_inconsistent_requests_say_what_is_valid(args: tuple, fragment: str) -> None:
    with pytest.raises(PlacementError) as info:
        build_placement(*args)
    assert fragment in str(info.value)
    assert isinstance(info.value, ByzantineConfigError) and isinstance(info.value, ValueError)


def test_is_prime() -> None:
    primes = [n for n in range(60) if is_prime(n)]
    assert primes == [n for n in range(2, 60) if all(n % d for d in range(2, n))]


def test_all_valid_small_mols_are_accepted() -> None:
    for l, r in itertools.product([3, 5, 7], [1, 3, 5]):  # noqa: E741 (the paper's l: files per worker)
        if r <= l - 1:
            assert build_placement("mols", r * l, r).f == l * l
