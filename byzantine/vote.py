"""Stage 1 of ByzShield: the per-file majority vote (Konstantinidis and Ramamoorthy, MLSys 2021, Sec. 3).

Each file is computed by its r holders. A file's winner is the value that at least r' = (r+1)/2 of its holders sent
(a strict majority, so at most one value can win); a missing reply is an erasure, not a vote. A file without such a
value has no winner this step and is dropped. Workers whose value lost to a winning majority, and senders of values
known to be invalid (NaN/Inf payloads), are reported as disagreeing: the evidence a PS uses to flag a worker.

Two modes:

* exact (:func:`vote_digests`): votes on opaque digests (BLAKE3-256 of the raw float32 bytes, ``wire.digest``).
  Non-finite payloads are found only once a payload is fetched; the caller then votes again with that digest in
  ``invalid`` (it can no longer win and its senders become disagreeing).
* tolerant (:func:`vote_tolerant`): for clusters of mixed hardware whose gradients differ in the last bits; votes on
  the vectors, two replies agreeing when ``|a - b| <= rtol * max(|a|, |b|) + atol`` (Euclidean norms).
"""
from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar, Union, cast

import numpy as np

from byzantine.errors import VoteError

if TYPE_CHECKING:
    from byzantine.placement import Placement

W = TypeVar("W")


class VoteMode(str, enum.Enum):
    """``--vote``: exact digests (one determinism class), auto (exact where holders agree, the commit-then-sketch
    round of :mod:`byzantine.sketch` where they do not; the default), tolerant (fetch every replica)."""

    EXACT = "exact"
    AUTO = "auto"
    TOLERANT = "tolerant"

FileWorkers = Union["Placement", Sequence[Sequence[int]]]


@dataclass(frozen=True)
class FileVote(Generic[W]):
    """The outcome for one file. ``winner`` is the winning digest (exact mode) or a winning vector (tolerant mode),
    None when the file has no majority; ``holders`` are the workers whose reply equals (or is close to) the winner,
    in ascending order (ask them for the payload); ``disagreeing`` are the repliers whose value lost to the winner or
    was invalid; ``absent`` the holders with no (or an excluded) reply."""

    file: int
    winner: W | None
    holders: tuple[int, ...]
    disagreeing: tuple[int, ...]
    absent: tuple[int, ...]

    @property
    def won(self) -> bool:
        return self.winner is not None


@dataclass(frozen=True)
class VoteResult(Generic[W]):
    """The vote of one step over all f files."""

    files: tuple[FileVote[W], ...]
    r_prime: int

    @property
    def winners(self) -> tuple[W | None, ...]:
        return tuple(v.winner for v in self.files)

    @property
    def files_won(self) -> tuple[int, ...]:
        return tuple(v.file for v in self.files if v.won)

    @property
    def files_dropped(self) -> tuple[int, ...]:
        return tuple(v.file for v in self.files if not v.won)

    @property
    def disagreeing(self) -> tuple[int, ...]:
        """Every worker that disagreed with a winning majority or sent an invalid value in some file (sorted)."""
        return tuple(sorted({w for v in self.files for w in v.disagreeing}))

    def disagreement_counts(self) -> dict[int, int]:
        """Worker -> number of files in which it disagreed this step."""
        return dict(Counter(w for v in self.files for w in v.disagreeing))


def _holders_and_r_prime(file_workers: FileWorkers, r_prime: int | None) -> tuple[tuple[tuple[int, ...], ...], int]:
    table = cast(Sequence[Sequence[int]], getattr(file_workers, "file_workers", file_workers))  # a Placement's
    holders = tuple(tuple(int(w) for w in ws) for ws in table)
    if r_prime is None:
        if not hasattr(file_workers, "r_prime"):
            raise VoteError("r_prime is required when file_workers is not a Placement")
        r_prime = int(file_workers.r_prime)
    if isinstance(r_prime, bool) or not isinstance(r_prime, (int, np.integer)) or r_prime < 1:
        raise VoteError(f"r_prime must be a positive integer, got {r_prime!r}")
    for i, ws in enumerate(holders):
        if len(set(ws)) != len(ws):
            raise VoteError(f"file {i} lists a holder twice: {ws}")
        if 2 * r_prime <= len(ws):
            raise VoteError(f"r'={r_prime} is not a strict majority of the r={len(ws)} holders of file {i}")
    return holders, int(r_prime)


def _check_replies(holders: tuple[tuple[int, ...], ...], replies: Sequence[Mapping[int, object]]) -> None:
    if len(replies) != len(holders):
        raise VoteError(f"replies cover {len(replies)} files but the placement has f={len(holders)}")
    for i, (ws, got) in enumerate(zip(holders, replies, strict=False)):
        strangers = sorted(set(got) - set(ws))
        if strangers:
            raise VoteError(f"file {i}: replies from workers {strangers} that do not hold it (holders {list(ws)})")


def vote_digests(file_workers: FileWorkers, replies: Sequence[Mapping[int, bytes]], r_prime: int | None = None, *,
                 invalid: Collection[bytes] = frozenset(),
                 excluded: Collection[int] = frozenset()) -> VoteResult[bytes]:
    """Exact majority vote on digests.

    ``file_workers``: a Placement, or per file the workers that hold it. ``replies[i]``: worker -> digest (bytes) for
    file i; a holder without an entry is absent. ``r_prime``: the majority threshold (default: the placement's).
    ``invalid``: digests that must not win (payload found non-finite); their senders count as disagreeing.
    ``excluded``: workers whose replies are ignored (treated as absent).
    Raises VoteError for replies from non-holders, non-bytes digests, or an r' that is not a strict majority.
    """
    holders, r_prime = _holders_and_r_prime(file_workers, r_prime)
    _check_replies(holders, replies)
    bad = frozenset(invalid)
    files = []
    for i, (ws, got) in enumerate(zip(holders, replies, strict=False)):
        present = {w: got[w] for w in ws if w in got and w not in excluded}
        for w, dig in present.items():
            if not isinstance(dig, (bytes, bytearray)):
                raise VoteError(f"file {i}: worker {w} sent a {type(dig).__name__}, not a bytes digest")
        counts = Counter(bytes(d) for d in present.values() if bytes(d) not in bad)
        top = max(counts.items(), key=lambda kv: kv[1], default=(None, 0))
        winner = top[0] if top[1] >= r_prime else None
        agree = tuple(sorted(w for w, d in present.items() if winner is not None and bytes(d) == winner))
        lost = tuple(sorted(w for w, d in present.items()
                            if bytes(d) in bad or (winner is not None and bytes(d) != winner)))
        absent = tuple(w for w in ws if w not in present)
        files.append(FileVote(i, winner, agree, lost, absent))
    return VoteResult(tuple(files), r_prime)


def _norm(v: np.ndarray) -> float:
    """Euclidean norm; float32 dot first, float64 blocks when that overflows (huge but finite entries)."""
    squared = float(np.dot(v, v))
    if np.isfinite(squared):
        return float(np.sqrt(squared))
    step = 1 << 16
    return float(np.sqrt(sum(float(np.dot(c, c)) for c in (v[i:i + step].astype(np.float64)
                                                           for i in range(0, v.shape[0], step)))))


def _pairwise_distances(vectors: list[np.ndarray], block: int = 1 << 16) -> np.ndarray:
    """Euclidean distances between all pairs, from exact float32 differences summed in float64 per block. (The Gram
    identity would lose the last-bit differences this mode is for whenever one reply is far from the others.)"""
    k = len(vectors)
    sq = np.zeros((k, k))
    diff = np.empty(min(block, vectors[0].shape[0]), dtype=np.float32)
    for start in range(0, vectors[0].shape[0], block):
        stop = min(start + block, vectors[0].shape[0])
        buf = diff[: stop - start]
        for a in range(k):
            for b in range(a + 1, k):
                np.subtract(vectors[a][start:stop], vectors[b][start:stop], out=buf)
                wide = buf.astype(np.float64)
                sq[a, b] += float(np.dot(wide, wide))
    sq += sq.T
    return np.sqrt(sq)


def _agreement(vectors: list[np.ndarray], rtol: float, atol: float) -> np.ndarray:
    """Boolean matrix: ``|a - b| <= rtol * max(|a|, |b|) + atol``."""
    norms = np.array([_norm(v) for v in vectors])
    return _pairwise_distances(vectors) <= rtol * np.maximum(norms[:, None], norms[None, :]) + atol


def _check_vectors(file: int, present: Mapping[int, np.ndarray],
                   shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """VoteError unless every reply of ``file`` is a 1-D float32 vector of the one ``shape`` seen so far (the
    first reply's when None); returns that shape."""
    for w, vec in present.items():
        if not isinstance(vec, np.ndarray) or vec.dtype != np.float32 or vec.ndim != 1:
            raise VoteError(f"file {file}: worker {w} sent {getattr(vec, 'dtype', type(vec).__name__)} "
                            f"{getattr(vec, 'shape', '')}; expected a 1-D float32 vector")
        shape = shape or vec.shape
        if vec.shape != shape:
            raise VoteError(f"file {file}: worker {w} sent length {vec.shape[0]}, others {shape[0]}")
    return shape


def _tolerant_winner(present: Mapping[int, np.ndarray], finite: list[int], r_prime: int, rtol: float,
                     atol: float) -> tuple[np.ndarray | None, tuple[int, ...]]:
    """The finite reply agreeing with the most others (itself included; ties: the lowest worker id) and the workers
    agreeing with it, when at least ``r_prime`` agree; ``(None, ())`` otherwise."""
    if not finite:
        return None, ()
    close = _agreement([present[w] for w in finite], rtol, atol)
    support = close.sum(axis=1)
    best = int(np.argmax(support))
    if support[best] < r_prime:
        return None, ()
    return present[finite[best]], tuple(finite[j] for j in np.flatnonzero(close[best]))


def vote_tolerant(file_workers: FileWorkers, replies: Sequence[Mapping[int, np.ndarray]],
                  r_prime: int | None = None, *, rtol: float = 1e-5, atol: float = 0.0,
                  excluded: Collection[int] = frozenset()) -> VoteResult[np.ndarray]:
    """Tolerant majority vote on full vectors (1-D float32, one length for all).

    Vectors with a NaN or Inf never win and their senders disagree. Among the finite replies, the one agreeing
    (within rtol/atol) with the most others, itself included, wins if at least r' agree (ties: the lowest worker
    id); ``winner`` is that worker's vector (not a copy) and ``holders`` all replies agreeing with it.
    """
    if not (rtol >= 0 and atol >= 0):
        raise VoteError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    holders, r_prime = _holders_and_r_prime(file_workers, r_prime)
    _check_replies(holders, replies)
    shape: tuple[int, ...] | None = None
    files = []
    for i, (ws, got) in enumerate(zip(holders, replies, strict=False)):
        present = {w: got[w] for w in ws if w in got and w not in excluded}
        shape = _check_vectors(i, present, shape)
        finite = [w for w in sorted(present) if np.isfinite(present[w]).all()]
        winner, agree = _tolerant_winner(present, finite, r_prime, rtol, atol)
        lost = tuple(sorted(w for w in present if w not in agree and (winner is not None or w not in finite)))
        absent = tuple(w for w in ws if w not in present)
        files.append(FileVote(i, winner, agree, lost, absent))
    return VoteResult(tuple(files), r_prime)
