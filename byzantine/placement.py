"""Task placement: which workers compute which files (ByzShield, Konstantinidis & Ramamoorthy, MLSys 2021, Sec. 4).

A placement is a biregular bipartite graph between K workers and f files: every worker computes l files, every
file is computed by r workers, and the PS accepts a file's gradient when r' = (r+1)/2 of its holders agree.

Schemes (the enum values are the CLI names):

- ``baseline``: no redundancy, f = K, r = 1.
- ``detox`` / ``maj_vote``: K/r disjoint groups of r consecutive workers, one file per group (DETOX and DRACO's
  repetition code; they differ only in how the PS combines the votes).
- ``mols``: r mutually orthogonal Latin squares of prime degree l, L_a(i, j) = (a*i + j) mod l for a = 1..r;
  worker k*l + s computes every file i*l + j with L_(k+1)(i, j) = s (ByzShield Sec. 4.1). K = r*l, f = l^2.
- ``rama_one`` / ``rama_two``: the Ramanujan bigraph of Burnwal, Sinha and Vidyasagar built from s x s cyclic-shift
  blocks P^(a*b), s prime (ByzShield Sec. 4.2), with P[a, b] = 1 iff b = a - 1 (mod s) as in the original code.
  Case 1 (m < s): (K, f, l, r) = (m*s, s^2, s, m), workers are block columns. Case 2 (m >= s, s | m):
  (K, f, l, r) = (s^2, m*s, m, s), workers are block rows.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from byzantine.errors import PlacementError


class Scheme(str, enum.Enum):
    """Placement schemes; the values are the CLI names."""

    BASELINE = "baseline"
    DETOX = "detox"
    MAJ_VOTE = "maj_vote"
    MOLS = "mols"
    RAMA_ONE = "rama_one"
    RAMA_TWO = "rama_two"


#: Names of the original ByzShield code accepted as aliases.
SCHEME_ALIASES: dict[str, Scheme] = {"draco-lite": Scheme.DETOX, "draco_lite": Scheme.DETOX}


@dataclass(frozen=True)
class Placement:
    """A file assignment: ``worker_files[k]`` are the sorted files of worker k, ``file_workers[i]`` the sorted
    holders of file i. Every worker holds ``l`` files and every file has ``r`` holders."""

    scheme: Scheme
    K: int
    f: int
    l: int  # noqa: E741 (the paper's l: files per worker)
    r: int
    worker_files: tuple[tuple[int, ...], ...]
    file_workers: tuple[tuple[int, ...], ...]

    @property
    def r_prime(self) -> int:
        """Copies an adversary must control to win a file's majority vote: (r+1)//2."""
        return (self.r + 1) // 2

    def biadjacency(self) -> np.ndarray:
        """The (K, f) 0/1 matrix H with H[k, i] = 1 iff worker k computes file i (uint8)."""
        matrix = np.zeros((self.K, self.f), dtype=np.uint8)
        for worker, files in enumerate(self.worker_files):
            matrix[worker, list(files)] = 1
        return matrix


def parse_scheme(scheme: Scheme | str) -> Scheme:
    """The :class:`Scheme` named by ``scheme`` (a member, a CLI name or an alias).

    Raises PlacementError naming the valid ones."""
    if isinstance(scheme, Scheme):
        return scheme
    try:
        return Scheme(scheme)
    except ValueError:
        pass
    if scheme in SCHEME_ALIASES:
        return SCHEME_ALIASES[scheme]
    valid = ", ".join([s.value for s in Scheme] + sorted(SCHEME_ALIASES))
    raise PlacementError(f"unknown placement scheme {scheme!r} (choose from {valid})")


def is_prime(n: int) -> bool:
    """Whether n is a prime number."""
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def _ratio(a: int, b: int) -> str:
    return str(a // b) if a % b == 0 else f"{a / b:.2f}"


def _need_odd(scheme: Scheme, r: int) -> None:
    if r % 2 == 0:
        raise PlacementError(
            f"{scheme.value} needs an odd replication so that a majority r' = (r+1)/2 exists; got r={r}")


# A builder maps (K, r, rama_m) to (worker -> files, number of files); it validates its own request.
Builder = Callable[[int, int, "int | None"], tuple[list[list[int]], int]]


def _baseline(K: int, r: int, m: int | None) -> tuple[list[list[int]], int]:
    if r != 1:
        raise PlacementError(f"baseline has no replication: it needs r = 1, got r={r}")
    return [[k] for k in range(K)], K


def _groups(K: int, r: int, m: int | None, scheme: Scheme) -> tuple[list[list[int]], int]:
    _need_odd(scheme, r)
    if K % r:
        raise PlacementError(
            f"{scheme.value} needs K divisible by r (K/r groups of r workers); "
            f"K={K}, r={r} gives {_ratio(K, r)} groups")
    return [[k // r] for k in range(K)], K // r


def _mols(K: int, r: int, m: int | None) -> tuple[list[list[int]], int]:
    _need_odd(Scheme.MOLS, r)
    l = K // r  # noqa: E741 (the paper's l: files per worker)
    if K % r or not is_prime(l) or r > l - 1:
        raise PlacementError(
            f"mols needs K = r*l with l prime and r <= l-1; K={K}, r={r} gives l={_ratio(K, r)}")
    files: list[list[int]] = []
    for k in range(r):
        for s in range(l):
            files.append(sorted(i * l + j for i in range(l) for j in range(l) if ((k + 1) * i + j) % l == s))
    return files, l * l


def _rama_one(K: int, r: int, m: int | None) -> tuple[list[list[int]], int]:
    if m is not None and m != r:
        raise PlacementError(f"rama_one takes m from the replication (r = m); got --rama-m {m} with r={r}")
    _need_odd(Scheme.RAMA_ONE, r)
    s = K // r
    if K % r or not is_prime(s) or not r < s:
        raise PlacementError(
            f"rama_one (Ramanujan case 1) needs K = m*s with s prime and m = r < s; "
            f"K={K}, r={r} gives s={_ratio(K, r)}")
    # B's block (i, j) is P^(i*j) with P[a, b] = 1 iff b = a - 1 (mod s), the original code's cyclic shift, so
    # (P^(i*j))[a, b] = 1 iff b = a - i*j. Case 1 works with B^T: worker j*s + b (block column j) holds file
    # i*s + a (block row i) iff a = b + i*j (mod s).
    files = [sorted(i * s + (b + i * j) % s for i in range(s)) for j in range(r) for b in range(s)]
    return files, s * s


def _rama_two(K: int, r: int, m: int | None) -> tuple[list[list[int]], int]:
    s = r
    _need_odd(Scheme.RAMA_TWO, r)
    if not is_prime(s) or K != s * s:
        raise PlacementError(
            f"rama_two (Ramanujan case 2) needs r = s prime and K = s^2; got K={K}, r={r}"
            + ("" if is_prime(s) else f" ({s} is not prime)"))
    m = s if m is None else m
    if m < s or m % s:
        raise PlacementError(f"rama_two needs --rama-m a positive multiple of s = {s}; got m={m}")
    # Worker i*s + a (block row i) holds file j*s + b (block column j) iff (P^(i*j))[a, b] = 1, i.e.
    # b = a - i*j (mod s) with the original code's shift P[a, b] = 1 iff b = a - 1; columns j and j + s
    # repeat the same block, so m = t*s gives t copies of each holder set (as in the paper's construction).
    files = [sorted(j * s + (a - i * j) % s for j in range(m)) for i in range(s) for a in range(s)]
    return files, m * s


_BUILDERS: dict[Scheme, Builder] = {
    Scheme.BASELINE: _baseline,
    Scheme.DETOX: lambda K, r, m: _groups(K, r, m, Scheme.DETOX),
    Scheme.MAJ_VOTE: lambda K, r, m: _groups(K, r, m, Scheme.MAJ_VOTE),
    Scheme.MOLS: _mols,
    Scheme.RAMA_ONE: _rama_one,
    Scheme.RAMA_TWO: _rama_two,
}


def build_placement(scheme: Scheme | str, workers: int, replication: int, rama_m: int | None = None) -> Placement:
    """Build the placement of ``scheme`` for K = ``workers`` and r = ``replication`` (ByzShield Sec. 4).

    ``rama_m`` is the m of Ramanujan case 2 (default s = r; a multiple of s). Raises PlacementError with a message
    that says what would be valid for any inconsistent request.
    """
    kind = parse_scheme(scheme)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PlacementError(f"the number of workers must be a positive integer; got {workers!r}")
    if isinstance(replication, bool) or not isinstance(replication, int) or replication < 1:
        raise PlacementError(f"the replication must be a positive integer; got {replication!r}")
    if rama_m is not None and kind not in (Scheme.RAMA_ONE, Scheme.RAMA_TWO):
        raise PlacementError(f"--rama-m applies only to rama_two (and rama_one, where it must equal r); "
                             f"scheme is {kind.value}")
    if rama_m is not None and (isinstance(rama_m, bool) or not isinstance(rama_m, int) or rama_m < 1):
        raise PlacementError(f"--rama-m must be a positive integer; got {rama_m!r}")
    worker_files, n_files = _BUILDERS[kind](workers, replication, rama_m)
    holders: list[list[int]] = [[] for _ in range(n_files)]
    for worker, files in enumerate(worker_files):
        for file in files:
            holders[file].append(worker)
    return Placement(
        scheme=kind, K=workers, f=n_files, l=len(worker_files[0]), r=replication,
        worker_files=tuple(tuple(files) for files in worker_files),
        file_workers=tuple(tuple(ws) for ws in holders),
    )
