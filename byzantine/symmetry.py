"""Automorphisms of a placement, used to break symmetry in the exact worst-case search.

MOLS and both Ramanujan cases are incidence structures of the affine plane AG(2, p): files are points (x, y) of
Z_p^2 (Ramanujan case 2 with m = t*p repeats every point t times) and workers are lines. Every affine map
v -> M v + c that sends the placement's lines onto its lines permutes the workers and preserves which files a set
of workers controls, so an adversary's best sets come in orbits. We enumerate the linear parts M in GL(2, p),
keep those that map every worker's file set onto some worker's file set, and compose them with the translations.
Each candidate is verified against the placement itself, so a wrong coordinate map can only lose symmetry, never
make the search wrong. Schemes without a coordinate map get the trivial group.
"""
from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable

import numpy as np

from byzantine.placement import Placement, Scheme

log = logging.getLogger(__name__)

#: Largest p for which GL(2, p) is enumerated (|GL(2, p)| ~ p^4).
MAX_PRIME = 13


def _mols_points(p: Placement) -> tuple[int, np.ndarray]:
    return p.l, np.array([divmod(i, p.l) for i in range(p.f)])


def _rama_one_points(p: Placement) -> tuple[int, np.ndarray]:
    s = p.l
    return s, np.array([divmod(i, s) for i in range(p.f)])


def _rama_two_points(p: Placement) -> tuple[int, np.ndarray]:
    s = p.r
    return s, np.array([(j % s, b) for j, b in (divmod(i, s) for i in range(p.f))])


#: scheme -> (p, point (x, y) of every file). Files that share a point share their holders.
_POINTS: dict[Scheme, Callable[[Placement], tuple[int, np.ndarray]]] = {
    Scheme.MOLS: _mols_points,
    Scheme.RAMA_ONE: _rama_one_points,
    Scheme.RAMA_TWO: _rama_two_points,
}


def _files_are_points(placement: Placement, point_index: np.ndarray, lines: list[frozenset], p: int) -> bool:
    """Whether a file's holders are exactly the lines through its point, and every point carries as many files
    (so a point map that permutes the lines also preserves how many files a worker set distorts)."""
    copies = np.bincount(point_index, minlength=p * p)
    if copies.min() != copies.max():
        return False
    return all(set(placement.file_workers[i]) == {w for w, line in enumerate(lines) if int(x) in line}
               for i, x in enumerate(point_index))


def _worker_map(point_lines: dict[frozenset, int], lines: list[frozenset], image: np.ndarray) -> list[int] | None:
    """The worker permutation induced by the point map ``image`` (point index -> point index), or None."""
    perm = []
    for line in lines:
        target = point_lines.get(frozenset(int(image[x]) for x in line))
        if target is None:
            return None
        perm.append(target)
    return perm if len(set(perm)) == len(perm) else None


@functools.lru_cache(maxsize=32)
def automorphisms(placement: Placement) -> np.ndarray:
    """Worker permutations induced by affine automorphisms of the placement, as a read-only (n, K) int array (row 0
    is the identity). Each row g satisfies: worker set S controls exactly as many files as g(S)."""
    group = _affine_group(placement)
    group.setflags(write=False)
    return group


def _affine_group(placement: Placement) -> np.ndarray:
    identity = np.arange(placement.K)[None, :]
    builder = _POINTS.get(placement.scheme)
    if builder is None:
        return identity
    p, points = builder(placement)
    if p > MAX_PRIME or points.shape != (placement.f, 2) or points.min() < 0 or points.max() >= p:
        log.info("no affine symmetry used for %s (p=%d)", placement.scheme.value, p)
        return identity
    point_index = points[:, 0] * p + points[:, 1]
    lines = [frozenset(int(point_index[i]) for i in files) for files in placement.worker_files]
    point_lines = {line: k for k, line in enumerate(lines)}
    if len(point_lines) != placement.K or not _files_are_points(placement, point_index, lines, p):
        return identity
    grid = np.array([divmod(v, p) for v in range(p * p)])
    linear: list[list[int]] = []
    for a, b, c, d in itertools.product(range(p), repeat=4):
        if (a * d - b * c) % p == 0:
            continue
        image = ((grid @ np.array([[a, c], [b, d]])) % p) @ np.array([p, 1])
        perm = _worker_map(point_lines, lines, image)
        if perm is not None:
            linear.append(perm)
    shifts: list[list[int]] = []
    for dx, dy in itertools.product(range(p), repeat=2):
        image = ((grid + np.array([dx, dy])) % p) @ np.array([p, 1])
        perm = _worker_map(point_lines, lines, image)
        if perm is not None:
            shifts.append(perm)
    group = {tuple(np.array(t)[np.array(m)]) for m in linear for t in shifts}
    ident = tuple(range(placement.K))
    group.discard(ident)
    rows = [ident] + sorted(group)
    log.debug("%s K=%d: %d automorphisms", placement.scheme.value, placement.K, len(rows))
    return np.array(rows, dtype=np.int64)


def is_automorphism(placement: Placement, perm: np.ndarray) -> bool:
    """Whether the worker permutation ``perm`` maps the multiset of file holder sets onto itself."""
    files = sorted(tuple(sorted(int(perm[w]) for w in ws)) for ws in placement.file_workers)
    return files == sorted(placement.file_workers)


def orbit_minimal_prefix(group: np.ndarray, prefix: np.ndarray) -> bool:
    """False when some g in ``group`` maps the sorted ``prefix`` to a lexicographically smaller sorted set.

    If S* is the lexicographically smallest optimal set, g(S*) is optimal too, so sorted(g(S*)) >= S*; and since
    adding elements only lowers order statistics, every prefix P of S* passes this test. Failing prefixes can be
    skipped without losing S*.
    """
    images = np.sort(group[:, prefix], axis=1)
    differ = images != prefix
    first = differ.argmax(axis=1)
    smaller = differ[np.arange(len(group)), first] & (images[np.arange(len(group)), first] < prefix[first])
    return not bool(smaller.any())


class PrefixFilter:
    """:func:`orbit_minimal_prefix` made incremental with bit sets (K <= 64): ``masks[g]`` is the image of the current
    prefix under g as a bit set, and a set A is lexicographically smaller than a set B of the same size exactly when
    the smallest element of A xor B lies in A."""

    def __init__(self, group: np.ndarray) -> None:
        if group.shape[1] > 64:
            raise ValueError("PrefixFilter needs K <= 64")
        self.bits = np.left_shift(np.uint64(1), group.astype(np.uint64))

    def empty(self) -> np.ndarray:
        """Image masks of the empty prefix."""
        return np.zeros(len(self.bits), dtype=np.uint64)

    def extend(self, masks: np.ndarray, worker: int) -> np.ndarray:
        """Image masks of the prefix with ``worker`` added."""
        return masks | self.bits[:, worker]

    @staticmethod
    def minimal(masks: np.ndarray, prefix_mask: int) -> bool:
        """Whether no image of the prefix (bit set ``prefix_mask``) is lexicographically smaller than it."""
        diff = masks ^ np.uint64(prefix_mask)
        lowest = diff & (~diff + np.uint64(1))
        return not bool((masks & lowest).any())
