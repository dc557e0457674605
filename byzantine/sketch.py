"""Commit-then-sketch: a vote that tolerates honest floating-point differences between determinism classes.

ByzShield's vote (Konstantinidis and Ramamoorthy, MLSys 2021, Sec. 3) needs the r replicas of a file to be comparable.
Exact digests compare bit-equal replicas only; agents on other CPUs, kernel settings or GPUs compute gradients that
differ in the last bits. For a file whose digests disagree, each holder (already committed to its payload by the
digest) sends a sketch under a seed the PS reveals only after every digest is in, and replicas agree when their
sketches are close (see docs/byzantine.md for the argument with numbers).

The sketch of x in R^d under a 32-byte seed, with k = ``rows`` and c = ``width``:

1. Quantise exactly: with n = ceil(d / c) and A = 53 - ceil(log2 n) bits, E the binary exponent of max|x|
   (max|x| < 2^E) and s = A - E, X = rint(x * 2^s), zero-padded to n*c and read as an (n, c) matrix. |X| <= 2^A.
2. A Rademacher matrix G in {-1, +1}^(n x k) from a keyed BLAKE3 XOF (key = BLAKE3(context || seed)): bit l of row q
   is bit (q*k + l) of the stream (little-endian bit order within each byte); bit 1 means -1.
3. Y = G^T X * 2^-s, a (k, c) float64 matrix.

Every product and partial sum in step 3 is an integer of magnitude <= n * 2^A <= 2^53, so float64 arithmetic is exact
in any order, with or without FMA: BLAS may block the product as it likes and the result is still bit-identical on any
IEEE-754 machine. The PS can therefore recompute a holder's sketch from its payload and compare bit for bit.

For any deviation v (linearity: Y(a) - Y(b) = Y_G(Q(a) - Q(b))), ||Y(v)||_F^2 / k is a sum of k independent terms
g_l^T C g_l / k with C = X X^T and E[g^T C g] = tr C = ||v||^2:
* lower tail (Maurer 2003, non-negative summands with E Z^2 <= 3 (tr C)^2): P[||Y||^2/k <= (1 - e)||v||^2] <=
  exp(-k e^2 / 6), whatever the structure of v (sparse, one column, low rank);
* upper tail (Hoeffding plus a Gaussian linearisation: the Rademacher MGF is at most the Gaussian one, whose worst case
  over C with tr C = 1 is rank one): P[||Y||^2/k >= y ||v||^2] <= (y e^(1-y))^(k/2).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import blake3
import numpy as np

from byzantine.errors import VoteError
from byzantine.vote import FileVote, FileWorkers, VoteResult, _check_replies, _holders_and_r_prime

SEED_BYTES = 32
_CONTEXT = b"shield-sketch-v1"
_BLOCK_ROWS = 4096  # rows of G expanded at a time (the result does not depend on it: the arithmetic is exact)
_NORM_CHUNK = 1 << 20
#: A holder's reported norm may differ from the PS's recomputation by this much (relative) before it counts as a lie.
NORM_RTOL = 1e-6
#: Each byte value -> its 8 bits as +1.0 (bit 0) / -1.0 (bit 1), least significant bit first.
_SIGNS = np.array([[1.0 - 2.0 * ((v >> i) & 1) for i in range(8)] for v in range(256)], dtype=np.float64)


@dataclass(frozen=True)
class SketchParams:
    """Shape of the sketch and the probabilities its thresholds are set for.

    ``rows`` (k) and ``width`` (c): the sketch is a (k, c) float64 matrix (k*c*8 bytes on the wire). ``accept_p``: the
    probability, per pair of replicas and step, that a deviation above :meth:`hiding` passes as agreement.
    ``honest_p``: the probability, per honest pair within the tolerance, that it is judged to disagree.
    """

    rows: int = 256
    width: int = 32
    accept_p: float = 1e-10
    honest_p: float = 1e-12

    def __post_init__(self) -> None:
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 8 or self.rows % 8:
            raise VoteError(f"sketch rows must be a positive multiple of 8, got {self.rows!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or not 1 <= self.width <= 4096:
            raise VoteError(f"sketch width must be in 1..4096, got {self.width!r}")
        for name in ("accept_p", "honest_p"):
            p = getattr(self, name)
            if not 0 < p < 1:
                raise VoteError(f"{name} must be in (0, 1), got {p!r}")

    @property
    def size(self) -> int:
        return self.rows * self.width

    @property
    def nbytes(self) -> int:
        return self.size * 8

    def lower(self) -> float:
        """x: ||Y(v)||^2/k >= x ||v||^2 except with probability accept_p (0 when k is too small to promise it)."""
        return max(0.0, 1.0 - math.sqrt(6.0 * math.log(1.0 / self.accept_p) / self.rows))

    def upper(self) -> float:
        """y: ||Y(v)||^2/k <= y ||v||^2 except with probability honest_p (Chernoff bound of chi^2_k / k)."""
        return _upper_factor(self.rows, self.honest_p)

    def hiding(self) -> float:
        """sqrt(y / x): a pair whose quantised difference exceeds this many tolerances agrees with probability at
        most accept_p (inf when ``lower`` is 0)."""
        x = self.lower()
        return math.sqrt(self.upper() / x) if x > 0 else math.inf


@functools.lru_cache(maxsize=64)
def _upper_factor(rows: int, honest_p: float) -> float:
    """The y > 1 with (y e^(1-y))^(rows/2) = honest_p, by bisection (monotone in y; 200 halvings reach float64)."""
    target = math.log(honest_p) / (rows / 2.0)
    low, high = 1.0, 2.0
    while math.log(high) + 1.0 - high > target:
        high *= 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if math.log(mid) + 1.0 - mid > target:
            low = mid
        else:
            high = mid
    return high


DEFAULT_PARAMS = SketchParams()


@dataclass(frozen=True)
class SketchReply:
    """One holder's answer for one file: its sketch ((k, c) float64) and the L2 norm of its gradient, or
    ``sketch=None`` when its gradient is not finite (it can never win)."""

    sketch: np.ndarray | None
    norm: float | None = None

    @property
    def finite(self) -> bool:
        return self.sketch is not None


def new_seed() -> bytes:
    """A fresh, unpredictable sketch seed (revealed only after every digest of the step is in)."""
    import secrets

    return secrets.token_bytes(SEED_BYTES)


def quantisation_bits(d: int, width: int) -> int:
    """A = 53 - ceil(log2 n), n = ceil(d / width): the integer range that keeps every sum exact."""
    n = max(1, -(-d // width))
    return 53 - max(0, (n - 1).bit_length())


def quantisation_error(d: int, params: SketchParams = DEFAULT_PARAMS) -> float:
    """Upper bound of ||Q(x) - x|| / max|x| (rint error 2^(E-A-1) per coordinate, max|x| >= 2^(E-1))."""
    return math.sqrt(d) * 2.0 ** -quantisation_bits(d, params.width)


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != SEED_BYTES:
        raise VoteError(f"a sketch seed is {SEED_BYTES} bytes")


def _check_vector(x: np.ndarray, d: int | None) -> None:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 1:
        raise VoteError(f"sketch input must be a 1-D float32 array, got {getattr(x, 'dtype', type(x).__name__)}")
    if d is not None and x.shape[0] != d:
        raise VoteError(f"sketch inputs differ in length ({x.shape[0]} and {d})")


def _scale_exponent(x: np.ndarray, bits: int) -> int:
    """s such that |x * 2^s| < 2^bits (0 for an all-zero vector); VoteError for NaN/Inf."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if not math.isfinite(peak):
        raise VoteError("cannot sketch a vector holding NaN or Inf")
    return 0 if peak == 0.0 else bits - math.frexp(peak)[1]


def sketch_many(vectors: Sequence[np.ndarray], seed: bytes, params: SketchParams = DEFAULT_PARAMS) -> list[np.ndarray]:
    """The sketches of several vectors of one length under one seed (G is expanded once for all of them)."""
    _check_seed(seed)
    if not vectors:
        return []
    d = vectors[0].shape[0] if isinstance(vectors[0], np.ndarray) else None
    for x in vectors:
        _check_vector(x, d)
    assert d is not None
    k, c, m = params.rows, params.width, len(vectors)
    n = max(1, -(-d // c))
    bits = quantisation_bits(d, c)
    scales = [_scale_exponent(x, bits) for x in vectors]
    xof = blake3.blake3(key=blake3.blake3(_CONTEXT + bytes(seed)).digest())
    total = np.zeros((k, m * c), dtype=np.float64)
    block = np.zeros((_BLOCK_ROWS, m, c), dtype=np.float64)
    for q0 in range(0, n, _BLOCK_ROWS):
        q1 = min(n, q0 + _BLOCK_ROWS)
        rows = q1 - q0
        stream = np.frombuffer(xof.digest(length=rows * k // 8, seek=q0 * k // 8), dtype=np.uint8)
        g = _SIGNS[stream].reshape(rows, k)
        for j, (x, s) in enumerate(zip(vectors, scales, strict=False)):
            _fill_scaled(block[:rows, j, :], x[q0 * c:min(d, q1 * c)], np.float64(2.0 ** s))
        x_block = block[:rows].reshape(rows, m * c)
        np.rint(x_block, out=x_block)
        total += g.T @ x_block
    return [total[:, j * c:(j + 1) * c] * 2.0 ** -s for j, s in enumerate(scales)]


def _fill_scaled(view: np.ndarray, part: np.ndarray, scale: np.float64) -> None:
    """view (rows, c) <- part * scale in float64 (exact: a power of two), zero-padded after the end of ``part``."""
    c = view.shape[1]
    full, rem = divmod(part.shape[0], c)
    np.multiply(part[:full * c].reshape(full, c), scale, out=view[:full])
    if rem:
        view[full, rem:] = 0.0
        np.multiply(part[full * c:], scale, out=view[full, :rem])
    view[full + (1 if rem else 0):] = 0.0


def sketch(x: np.ndarray, seed: bytes, params: SketchParams = DEFAULT_PARAMS) -> np.ndarray:
    """The (rows, width) float64 sketch of one float32 vector (see the module docstring)."""
    return sketch_many([x], seed, params)[0]


def l2_norm(x: np.ndarray) -> float:
    """||x||_2 accumulated in float64 (a holder's reported norm; checked within :data:`NORM_RTOL`)."""
    total = 0.0
    for start in range(0, x.shape[0], _NORM_CHUNK):
        chunk = x[start:start + _NORM_CHUNK].astype(np.float64)
        total += float(np.dot(chunk, chunk))
    return math.sqrt(total)


def distance_sq(a: np.ndarray, b: np.ndarray) -> float:
    """||Y_a - Y_b||_F^2 / k: an estimate of the squared distance between the two sketched vectors."""
    diff = a - b
    return float(np.einsum("ij,ij->", diff, diff)) / a.shape[0]


def agree(a: SketchReply, b: SketchReply, tol: float, params: SketchParams = DEFAULT_PARAMS) -> bool:
    """Two replies agree when ||Y_a - Y_b||^2 / k <= y * (tol * min(norm_a, norm_b))^2.

    The smaller of the two reported norms is used, so a holder cannot widen the tolerance by reporting a larger
    norm. Non-finite replies agree with nothing."""
    if a.sketch is None or b.sketch is None or a.norm is None or b.norm is None:
        return False
    scale = tol * min(a.norm, b.norm)
    return distance_sq(a.sketch, b.sketch) <= params.upper() * scale * scale


def _check_reply(file: int, worker: int, reply: object, params: SketchParams) -> SketchReply:
    if not isinstance(reply, SketchReply):
        raise VoteError(f"file {file}: worker {worker} sent a {type(reply).__name__}, not a SketchReply")
    if reply.sketch is not None:
        s = reply.sketch
        if not isinstance(s, np.ndarray) or s.dtype != np.float64 or s.shape != (params.rows, params.width):
            raise VoteError(f"file {file}: worker {worker}'s sketch is not float64 ({params.rows}, {params.width})")
        if reply.norm is None or not (math.isfinite(reply.norm) and reply.norm >= 0):
            raise VoteError(f"file {file}: worker {worker}'s norm must be a finite number >= 0")
    return reply


def vote_sketches(file_workers: FileWorkers, replies: Sequence[Mapping[int, SketchReply]], tol: float,
                  r_prime: int | None = None, *, params: SketchParams = DEFAULT_PARAMS,
                  excluded: Collection[int] = frozenset(),
                  digests: Sequence[Mapping[int, bytes]] | None = None,
                  order_key: bytes = b"") -> VoteResult[int]:
    """Tolerant majority vote on sketches, one seed per step.

    For each file, every finite reply w has a group N(w): the replies that :func:`agree` with it (itself included).
    The reply with the largest group wins if that group has at least r' members; the file's ``winner`` is that worker
    (the group's *center*), ``holders`` its group, ``disagreeing`` every other reply (and non-finite ones).
    Ties go to the smallest keyed hash ``BLAKE3(order_key || digest)`` of the committed digest (of the worker id
    without ``digests``), then the lowest worker: with ``order_key`` the step's sketch seed, revealed only after
    every digest was committed, no holder can grind its digest to win a tie, and which payload is taken does not
    depend on which worker slot a class landed in. ``excluded`` workers (caught lying, or unreachable for this file)
    count as absent. Raises VoteError for malformed input or a negative tolerance.
    """
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise VoteError(f"the tolerance must be a finite number >= 0, got {tol!r}")
    holders, r_prime = _holders_and_r_prime(file_workers, r_prime)
    _check_replies(holders, replies)
    files = []
    for i, (ws, got) in enumerate(zip(holders, replies, strict=False)):
        present = {w: _check_reply(i, w, got[w], params) for w in ws if w in got and w not in excluded}
        keys = digests[i] if digests is not None else {}
        winner, agreeing, finite = _sketch_winner(present, tol, r_prime, params, keys, order_key)
        lost = tuple(w for w in sorted(present) if w not in agreeing and (winner is not None or w not in finite))
        files.append(FileVote(i, winner, agreeing, lost, tuple(w for w in ws if w not in present)))
    return VoteResult(tuple(files), r_prime)


def _sketch_winner(present: Mapping[int, SketchReply], tol: float, r_prime: int, params: SketchParams,
                   keys: Mapping[int, bytes], order_key: bytes) -> tuple[int | None, tuple[int, ...], list[int]]:
    """One file's vote (see :func:`vote_sketches`): the winning worker or None, its group, and the workers whose
    replies are finite."""
    finite = [w for w in sorted(present) if present[w].finite]
    groups = {w: tuple(v for v in finite if v == w or agree(present[w], present[v], tol, params)) for w in finite}
    center = min(finite, key=lambda w: (-len(groups[w]), tie_key(order_key, keys.get(w), w), w), default=None)
    winner = center if center is not None and len(groups[center]) >= r_prime else None
    return winner, (groups[winner] if winner is not None else ()), finite


def tie_key(order_key: bytes, digest: bytes | None, worker: int) -> bytes:
    """The keyed hash that breaks ties between equal groups (see :func:`vote_sketches`)."""
    material = digest if digest is not None else worker.to_bytes(8, "big")
    return blake3.blake3(_CONTEXT + b"/tie" + bytes(order_key) + material).digest()


def check_payload(payload: np.ndarray, claimed: SketchReply, seed: bytes,
                  params: SketchParams = DEFAULT_PARAMS) -> str | None:
    """Why ``payload`` contradicts the holder's own sketch reply (a proof that it lied), or None when it matches:
    the recomputed sketch must be bit-identical and the norm within :data:`NORM_RTOL`."""
    return check_payloads([(payload, claimed)], seed, params)[0]


def check_payloads(items: Sequence[tuple[np.ndarray, SketchReply]], seed: bytes,
                   params: SketchParams = DEFAULT_PARAMS) -> list[str | None]:
    """:func:`check_payload` for several payloads of one step, recomputing their sketches in one pass over G."""
    verdicts: list[str | None] = [None] * len(items)
    todo = []
    for i, (payload, claimed) in enumerate(items):
        if claimed.sketch is None:
            verdicts[i] = "it declared its gradient non-finite"
        elif not (isinstance(payload, np.ndarray) and payload.dtype == np.float32 and np.isfinite(payload).all()):
            verdicts[i] = "its payload cannot be sketched: it holds NaN or Inf"
        else:
            todo.append(i)
    mine = sketch_many([items[i][0] for i in todo], seed, params)
    for i, recomputed in zip(todo, mine, strict=False):
        verdicts[i] = _compare(items[i][0], items[i][1], recomputed)
    return verdicts


def _compare(payload: np.ndarray, claimed: SketchReply, mine: np.ndarray) -> str | None:
    if claimed.sketch is None or not np.array_equal(mine, claimed.sketch):
        return "its payload's sketch differs from the sketch it sent"
    norm = l2_norm(payload)
    if claimed.norm is None or abs(claimed.norm - norm) > NORM_RTOL * max(norm, 1e-30):
        return f"its payload's norm {norm:.9g} differs from the norm it sent ({claimed.norm!r})"
    return None


def relative_spread(replies: Sequence[SketchReply]) -> float:
    """Largest estimated ||a - b|| / min(||a||, ||b||) over pairs of finite replies (0 for fewer than two)."""
    finite = [r for r in replies if r.finite and r.norm]
    worst = 0.0
    for a in range(len(finite)):
        for b in range(a + 1, len(finite)):
            scale = min(finite[a].norm, finite[b].norm)  # type: ignore[type-var]
            worst = max(worst, math.sqrt(distance_sq(finite[a].sketch, finite[b].sketch)) / scale)  # type: ignore
    return worst
