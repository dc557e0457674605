"""Exact worst case: the most files q Byzantine workers can win (ByzShield Sec. 5, the quantity c_max).

A file is *distorted* when at least r' = (r+1)/2 of its r holders are Byzantine. c_max(q) is the largest number
of distorted files over all sets of q workers. We find it, and the lexicographically smallest set achieving it, by a
depth-first branch and bound over sorted worker sets in lexicographic order:

- **Bound.** At a node the chosen set S distorts ``c(S)`` files and t workers remain to be picked from the workers
  after the last one. A not-yet-distorted file still reachable with deficit d = r' - |holders in S| needs d more
  Byzantine holders, so giving each added worker 1/d per such file bounds the new files by the sum of the t best
  workers' weights. Files untouched by S can only be distorted by the t new workers alone, so their number is also at
  most c_max(t), computed first (smaller q is cheaper); the bound takes the better of the two splits.
- **Symmetry.** Affine automorphisms of the placement (:mod:`shield_ps.byzantine.symmetry`) map optimal sets to
  optimal sets; a prefix that some automorphism maps to a lexicographically smaller set cannot start the smallest
  optimal set and is skipped.
- **Leaves.** The last two workers are chosen at once by evaluating every pair with two matrix products.
- **Incumbent.** A greedy + swap local search supplies a value v0; the search prunes subtrees whose bound is at most
  the best value seen (initially v0 - 1), and keeps a set only when it is strictly better, so the first optimal set
  met in lexicographic order, the smallest one, is the one reported.

With a time limit the search stops honestly: the best set found and a proven upper bound (the largest bound of any
subtree left unexplored).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from shield_ps.byzantine.placement import Placement
from shield_ps.byzantine.symmetry import automorphisms, orbit_minimal_prefix
from shield_ps.errors import AnalysisError

log = logging.getLogger(__name__)

#: Prefixes up to this length are tested against the automorphism group.
SYMMETRY_DEPTH = 6
_CHECK_EVERY = 256


@dataclass(frozen=True)
class WorstCase:
    """c_max for q Byzantine workers: ``worst_set`` distorts ``c_max`` files; when ``exact`` is False the search ran
    out of time and ``upper_bound`` is the best proven bound (equal to c_max when exact)."""

    q: int
    c_max: int
    exact: bool
    upper_bound: int
    worst_set: tuple[int, ...]


class _OutOfTime(Exception):
    """Raised inside the search when the deadline passes; carries the bound of everything left unexplored."""

    def __init__(self) -> None:
        super().__init__("out of time")
        self.open_bound = 0


def distorted(placement: Placement, workers: tuple[int, ...] | list[int]) -> int:
    """Number of files in which ``workers`` hold at least r' copies."""
    counts = placement.biadjacency()[list(workers)].sum(axis=0, dtype=np.int64)
    return int((counts >= placement.r_prime).sum())


class _Search:
    def __init__(self, placement: Placement, q: int, smaller: list[int], deadline: float | None) -> None:
        self.p = placement
        self.q = q
        self.rp = placement.r_prime
        self.H = placement.biadjacency().astype(np.float64)
        self.Hi = self.H.astype(np.int64)
        K = placement.K
        # avail[j, i]: holders of file i among workers j..K-1.
        self.avail = np.vstack([np.cumsum(self.Hi[::-1], axis=0)[::-1], np.zeros((1, placement.f), np.int64)])
        self.smaller = smaller          # smaller[t] = exact c_max(t) for t < q
        self.group = automorphisms(placement)
        self.deadline = deadline
        self.nodes = 0
        self.best = -1
        self.best_set: tuple[int, ...] = ()
        self.chosen: list[int] = []
        self.K = K
        self.root_bound = min(placement.f, q * placement.l // self.rp)

    # --- bound -------------------------------------------------------------------------------------------------
    def bounds(self, counts: np.ndarray, ws: np.ndarray, t: int) -> np.ndarray:
        """Upper bounds on c(S + w + T) for each w in ``ws``, over T of size t from the workers after w.

        ``counts`` are the file counts of S. All children are bounded at once, one row per child.
        """
        child = counts[None, :] + self.Hi[ws]
        deficit = self.rp - child
        done = (deficit <= 0).sum(axis=1)
        if t == 0:
            return done
        live = (deficit > 0) & (self.avail[ws + 1] >= deficit)
        weight = np.where(live, 1.0 / np.maximum(deficit, 1), 0.0)
        partial = np.where(child > 0, weight, 0.0)
        # gain[k, c]: weight of worker k for child c; workers not after w count 0, which cannot raise a top-t sum
        # because at least t workers follow w.
        after = np.arange(self.K)[:, None] > ws[None, :]
        gain_all = np.where(after, self.H @ weight.T, 0.0)
        gain_part = np.where(after, self.H @ partial.T, 0.0)
        cut = self.K - t
        top_all = np.partition(gain_all, cut, axis=0)[cut:].sum(axis=0)
        top_part = np.partition(gain_part, cut, axis=0)[cut:].sum(axis=0) + self.fresh_cap(t)
        new = np.minimum(np.minimum(top_all, top_part), live.sum(axis=1))
        return done + np.floor(new + 1e-9).astype(np.int64)

    def fresh_cap(self, t: int) -> float:
        """Files untouched by S that t more workers can distort: at most c_max(t) (known for t < q)."""
        return float(self.smaller[t]) if t < len(self.smaller) else math.inf

    # --- leaves ------------------------------------------------------------------------------------------------
    def finish(self, counts: np.ndarray, j: int, t: int) -> None:
        """Choose the last t <= 2 workers among j..K-1 optimally (first maximum in lexicographic order)."""
        deficit = self.rp - counts
        done = int((deficit <= 0).sum())
        Hc = self.H[j:]
        need1 = (deficit == 1).astype(np.float64)
        gain1 = Hc @ need1
        if t == 1:
            a = int(np.argmax(gain1))
            self.offer(done + int(round(gain1[a])), (j + a,))
            return
        need2 = (deficit == 2).astype(np.float64)
        pair = gain1[:, None] + gain1[None, :] + (Hc * (need2 - need1)) @ Hc.T
        n = len(gain1)
        iu = np.triu_indices(n, 1)
        vals = pair[iu]
        best = int(np.argmax(vals))
        self.offer(done + int(round(vals[best])), (j + int(iu[0][best]), j + int(iu[1][best])))

    def offer(self, value: int, tail: tuple[int, ...]) -> None:
        if value > self.best:
            self.best = value
            self.best_set = tuple(self.chosen) + tail

    # --- depth-first search ------------------------------------------------------------------------------------
    def tick(self) -> None:
        self.nodes += 1
        if self.deadline is not None and self.nodes % _CHECK_EVERY == 0 and time.monotonic() > self.deadline:
            raise _OutOfTime()

    def visit(self, counts: np.ndarray, j: int, t: int, bound: int) -> None:
        """Explore every completion of the current prefix (file counts ``counts``, proven ``bound``) by t workers
        from j..K-1."""
        try:
            self.tick()
        except _OutOfTime as stop:
            stop.open_bound = max(stop.open_bound, bound)
            raise
        if t <= 2:
            self.finish(counts, j, t) if t > 0 else self.offer(int((counts >= self.rp).sum()), ())
            return
        ws = np.arange(j, self.K - t + 1)
        child_bounds = np.minimum(self.bounds(counts, ws, t - 1), bound)
        for i, w in enumerate(ws.tolist()):
            if child_bounds[i] <= self.best:
                continue
            self.chosen.append(w)
            try:
                if len(self.chosen) > SYMMETRY_DEPTH or orbit_minimal_prefix(self.group, np.array(self.chosen)):
                    self.visit(counts + self.Hi[w], w + 1, t - 1, int(child_bounds[i]))
            except _OutOfTime as stop:
                stop.open_bound = max(stop.open_bound, int(child_bounds[i + 1:].max(initial=0)))
                raise
            finally:
                self.chosen.pop()


def _local_search(placement: Placement, q: int) -> tuple[int, tuple[int, ...]]:
    """A good set by greedy growth then best-improvement swaps (a starting incumbent; any value is safe)."""
    H = placement.biadjacency().astype(np.int64)
    rp = placement.r_prime
    K = placement.K
    chosen: list[int] = []
    counts = np.zeros(placement.f, np.int64)
    for _ in range(q):
        gains = [(-(((counts + H[w]) >= rp).sum() * 4 + ((counts + H[w]) == rp - 1).sum()), w)
                 for w in range(K) if w not in chosen]
        w = min(gains)[1]
        chosen.append(w)
        counts += H[w]
    value = int((counts >= rp).sum())
    improved = True
    while improved:
        improved = False
        for out in list(chosen):
            base = counts - H[out]
            for w in range(K):
                if w in chosen:
                    continue
                v = int(((base + H[w]) >= rp).sum())
                if v > value:
                    chosen[chosen.index(out)] = w
                    counts, value, improved = base + H[w], v, True
                    break
            if improved:
                break
    return value, tuple(sorted(chosen))


#: (placement, q) -> exact answer; small results, reused as bounds for larger q.
_EXACT: dict[tuple[Placement, int], WorstCase] = {}
_EXACT_MAX = 4096


def clear_cache() -> None:
    """Forget the exact answers kept for reuse (benchmarks call this to time a cold start)."""
    _EXACT.clear()


def _smaller_bounds(placement: Placement, q: int, deadline: float | None) -> list[int]:
    """Proven upper bounds on c_max(t) for t < q: exact values while time lasts, then the counting bound
    min(f, t*l // r') tightened by c_max(t) <= c_max(u) + (t - u)*l (one worker distorts at most l more files)."""
    rp, l = placement.r_prime, placement.l
    bounds = [min(placement.f, t * l // rp) for t in range(q)]
    for t in range(1, q):
        if deadline is not None and time.monotonic() > deadline:
            break
        sub = _solve(placement, t, deadline)
        bounds[t] = min(bounds[t], sub.upper_bound)
        if not sub.exact:
            break
    for t in range(1, q):
        bounds[t] = min(bounds[t], bounds[t - 1] + l)
    return bounds


def _solve(placement: Placement, q: int, deadline: float | None) -> WorstCase:
    cached = _EXACT.get((placement, q))
    if cached is not None:
        return cached
    if q == 0:
        return WorstCase(0, 0, True, 0, ())
    search = _Search(placement, q, _smaller_bounds(placement, q, deadline), deadline)
    v0, set0 = _local_search(placement, q)
    search.best = v0 - 1
    started = time.monotonic()
    try:
        search.visit(np.zeros(placement.f, np.int64), 0, q, search.root_bound)
    except _OutOfTime as stop:
        # A set met by the search at the proven optimum is the smallest optimal one; the greedy set need not be.
        from_search = search.best >= v0
        best, best_set = (search.best, search.best_set) if from_search else (v0, set0)
        upper = max(best, stop.open_bound)
        log.info("q=%d: out of time after %d nodes; best %d, bound %d", q, search.nodes, best, upper)
        return WorstCase(q, best, from_search and best == upper, upper, best_set)
    log.debug("q=%d: c_max=%d, %d nodes, %.2fs", q, search.best, search.nodes, time.monotonic() - started)
    if search.best < v0 or sorted(search.best_set) != list(search.best_set) or len(search.best_set) != q:
        raise AnalysisError(f"worst-case search lost its incumbent at q={q} (found {search.best}, greedy {v0})")
    answer = WorstCase(q, search.best, True, search.best, search.best_set)
    if len(_EXACT) >= _EXACT_MAX:
        _EXACT.clear()
    _EXACT[(placement, q)] = answer
    return answer


def worst_case(placement: Placement, q: int, time_limit: float | None = None) -> WorstCase:
    """The exact c_max(q) and the lexicographically smallest worker set achieving it (ByzShield Sec. 5).

    ``time_limit`` (seconds, covering the smaller q used as bounds) makes the answer honest rather than exact when
    it runs out: the best set found, ``exact=False`` and a proven ``upper_bound``.
    """
    if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q <= placement.K:
        raise AnalysisError(f"q must be an integer in 0..K={placement.K}; got {q!r}")
    return _solve(placement, q, None if time_limit is None else time.monotonic() + time_limit)
