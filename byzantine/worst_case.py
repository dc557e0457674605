"""Exact worst case: the most files q Byzantine workers can win (ByzShield Sec. 5, the quantity c_max).

A file is *distorted* when at least r' = (r+1)/2 of its r holders are Byzantine. c_max(q) is the largest number
of distorted files over all sets of q workers. We find it, and the lexicographically smallest set achieving it, by a
depth-first branch and bound over sorted worker sets in lexicographic order:

- **Bound.** At a node the chosen set S distorts ``c(S)`` files and t workers remain to be picked from the workers
  after the last one. A not-yet-distorted file still reachable with deficit d = r' - |holders in S| needs d more
  Byzantine holders, so giving each added worker 1/d per such file bounds the new files by the sum of the t best
  workers' weights. Files untouched by S can only be distorted by the t new workers alone, so their number is also at
  most c_max(t), computed first (smaller q is cheaper); the bound takes the better of the two splits.
- **Symmetry.** Affine automorphisms of the placement (:mod:`byzantine.symmetry`) map optimal sets to
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

from byzantine.errors import AnalysisError
from byzantine.placement import Placement
from byzantine.symmetry import PrefixFilter, automorphisms

log = logging.getLogger(__name__)

_CHECK_EVERY = 256
#: Random two-worker perturbations tried by the starting local search.
KICKS = 12
#: Prefixes up to this length are always tested against the automorphism group; longer ones only when at least
#: LEAF_T workers remain after them (the test costs O(|group|); near the leaves it does not pay for itself).
SYMMETRY_DEPTH = 6
LEAF_T = 3


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
        group = automorphisms(placement) if K <= 64 else None
        self.symmetry = PrefixFilter(group) if group is not None and len(group) > 1 else None
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

    def visit(self, counts: np.ndarray, j: int, t: int, bound: int, masks: np.ndarray | None) -> None:
        """Explore every completion of the current prefix (file counts ``counts``, proven ``bound``, automorphic
        image masks ``masks``) by t workers from j..K-1."""
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
        prefix_mask = sum(1 << w for w in self.chosen)
        symmetry = self.symmetry  # set whenever masks are (the symmetry filter makes them)
        for i, w in enumerate(ws.tolist()):
            if child_bounds[i] <= self.best:
                continue
            child_masks = None
            if masks is not None and symmetry is not None and (len(self.chosen) < SYMMETRY_DEPTH or t > LEAF_T):
                child_masks = symmetry.extend(masks, w)
                if not symmetry.minimal(child_masks, prefix_mask | (1 << w)):
                    continue
            self.chosen.append(w)
            try:
                self.visit(counts + self.Hi[w], w + 1, t - 1, int(child_bounds[i]), child_masks)
            except _OutOfTime as stop:
                stop.open_bound = max(stop.open_bound, int(child_bounds[i + 1:].max(initial=0)))
                raise
            finally:
                self.chosen.pop()


def _scores(counts: np.ndarray, rp: int) -> np.ndarray:
    """Local-search score of each row of file counts: distorted files first, files one copy short second."""
    return (counts >= rp).sum(axis=-1) * (counts.shape[-1] + 1) + (counts == rp - 1).sum(axis=-1)


def _improve(H: np.ndarray, rp: int, chosen: list[int]) -> list[int]:
    """Swap one chosen worker for an outside one while the score strictly rises (so it terminates)."""
    chosen = list(chosen)
    counts = H[chosen].sum(axis=0)
    score = int(_scores(counts, rp))
    improved = True
    while improved:
        improved = False
        for position, out in enumerate(chosen):
            trial = _scores(counts - H[out] + H, rp)
            trial[chosen] = -1
            w = int(np.argmax(trial))
            if trial[w] > score:
                counts = counts - H[out] + H[w]
                chosen[position], score, improved = w, int(trial[w]), True
    return chosen


def _local_search(placement: Placement, q: int) -> tuple[int, tuple[int, ...]]:
    """A good starting set (any value is safe): greedy growth, and the exact answer for q-1 plus its best extra
    worker when known, each improved by swaps."""
    H = placement.biadjacency().astype(np.int64)
    rp = placement.r_prime
    starts: list[list[int]] = []
    seeds = [[], *([w] for w in sorted({placement.K // 3, placement.K // 2, placement.K - 1}))]
    if (placement, q - 1) in _EXACT:
        seeds.append(list(_EXACT[(placement, q - 1)].worst_set))
    for seed in seeds:
        chosen = seed[:q]
        while len(chosen) < q:
            trial = _scores(H[chosen].sum(axis=0) + H, rp)
            trial[chosen] = -1
            chosen.append(int(np.argmax(trial)))
        starts.append(_improve(H, rp, chosen))
    value = lambda c: int((H[c].sum(axis=0) >= rp).sum())  # noqa: E731
    best = max(starts, key=value)
    rng = np.random.default_rng(placement.K * 1000 + q)  # deterministic kicks: same answer every run
    for _ in range(KICKS if 0 < q < placement.K else 0):
        kicked = list(best)
        outside = np.setdiff1d(np.arange(placement.K), kicked)
        for position, w in zip(rng.choice(q, size=min(2, q, len(outside)), replace=False),
                               rng.choice(outside, size=min(2, q, len(outside)), replace=False), strict=False):
            kicked[position] = int(w)
        kicked = _improve(H, rp, kicked)
        if value(kicked) > value(best):
            best = kicked
    return value(best), tuple(sorted(best))


#: (placement, q) -> exact answer; small results, reused as bounds for larger q.
_EXACT: dict[tuple[Placement, int], WorstCase] = {}
_EXACT_MAX = 4096


def clear_cache() -> None:
    """Forget the exact answers kept for reuse (benchmarks call this to time a cold start)."""
    _EXACT.clear()


def _smaller_bounds(placement: Placement, q: int, deadline: float | None) -> list[int]:
    """Proven upper bounds on c_max(t) for t < q: exact values while time lasts, then the counting bound
    min(f, t*l // r') tightened by c_max(t) <= c_max(u) + (t - u)*l (one worker distorts at most l more files)."""
    rp, l = placement.r_prime, placement.l  # noqa: E741 (the paper's l: files per worker)
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
        masks = search.symmetry.empty() if search.symmetry is not None else None
        search.visit(np.zeros(placement.f, np.int64), 0, q, search.root_bound, masks)
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
