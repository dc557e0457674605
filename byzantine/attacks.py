"""Simulated attacks on the file gradients, as an omniscient adversary (ByzShield, MLSys 2021, Sec. 6).

The PS knows every honest file gradient; the Byzantine workers' replicas are rewritten before the vote. Byzantine
copies of one file are identical, so a file held by at least r' Byzantine workers is won by the attack vector
(it is *corrupted*); elsewhere the Byzantine replicas lose the vote and their senders show up as disagreeing.

* ``rev-grad``: -c * g_i for each corrupted file i.
* ``constant``: every entry -c.
* ``foe`` (Fall of Empires, Xie et al., UAI 2019): -c * the mean of the honest workers' replica slots.
* ``alie`` (A Little Is Enough, Baruch et al., NeurIPS 2019): mu + z * sigma, coordinate-wise over the replica
  slots. The original ByzShield code takes the statistics over all f*r slots before rewriting them (every slot then
  holds an honest gradient), i.e. file gradients weighted by their replica counts; ``alie_honest_only=True`` uses
  only the honest workers' slots instead. ``z`` defaults to 1.0 as the original code; ``z="auto"`` is ALIE's
  z_max = Phi^-1((n - s) / n) with s = floor(n/2 + 1) - m for the rows the robust aggregator sees: n = f files
  (the vote's winners) of which m are Byzantine (the files the attack wins). For the baseline (f = K, r = 1) that is
  ALIE's own n workers and m Byzantine workers; with redundancy the aggregator's inputs are files, not workers.

Nothing here allocates an (f, d) array beyond the optional output copy: statistics are accumulated in float64 over
column blocks, and with ``inplace=True`` the corrupted rows of the input are overwritten.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Literal

import numpy as np

from byzantine.errors import AttackError
from byzantine.vote import VoteResult, vote_digests

if TYPE_CHECKING:
    from byzantine.placement import Placement

_STATS_BLOCK = 1 << 15
_HONEST, _ATTACK = b"honest", b"attack"


class Attack(str, enum.Enum):
    """The simulated attacks; values are the CLI names."""

    REV_GRAD = "rev-grad"
    CONSTANT = "constant"
    FOE = "foe"
    ALIE = "alie"


@dataclass(frozen=True)
class AttackResult:
    """``values``: the (f, d) per-file vectors after the attack (the input itself when ``inplace``); ``corrupted``:
    the files the attack wins; ``vote``: the vote's outcome with labels (``b"honest"`` / ``b"attack"``) as digests,
    whose ``disagreeing`` workers are the ones a real vote would flag."""

    values: np.ndarray
    corrupted: tuple[int, ...]
    vote: VoteResult[bytes]


def parse_attack(name: Attack | str) -> Attack:
    try:
        return Attack(name)
    except ValueError:
        raise AttackError(f"unknown attack {name!r}; known: {', '.join(a.value for a in Attack)}") from None


def check_byzantine_set(placement: Placement, byzantine: Collection[int]) -> frozenset[int]:
    """The Byzantine workers as a set, or AttackError if one is out of 0..K-1 or repeated."""
    workers = [int(w) for w in byzantine]
    bad = sorted(w for w in workers if not 0 <= w < placement.K)
    if bad:
        raise AttackError(f"Byzantine workers {bad} out of range 0..{placement.K - 1} (K={placement.K})")
    if len(set(workers)) != len(workers):
        raise AttackError(f"Byzantine set repeats a worker: {sorted(workers)}")
    return frozenset(workers)


def byzantine_holders(placement: Placement, byzantine: Collection[int]) -> np.ndarray:
    """Per file, how many of its holders are Byzantine (an (f,) int array)."""
    bad = check_byzantine_set(placement, byzantine)
    return np.array([sum(w in bad for w in ws) for ws in placement.file_workers], dtype=np.int64)


def corrupted_files(placement: Placement, byzantine: Collection[int]) -> tuple[int, ...]:
    """The files held by at least r' Byzantine workers: those the adversary wins (ByzShield Sec. 3)."""
    return tuple(int(i) for i in np.flatnonzero(byzantine_holders(placement, byzantine) >= placement.r_prime))


def simulated_vote(placement: Placement, byzantine: Collection[int]) -> VoteResult[bytes]:
    """The vote every replica would produce under the attack, with all replies present: honest workers send
    ``b"honest"``, Byzantine ones ``b"attack"``."""
    bad = check_byzantine_set(placement, byzantine)
    replies = [{w: (_ATTACK if w in bad else _HONEST) for w in ws} for ws in placement.file_workers]
    return vote_digests(placement, replies)


def alie_z_max(n: int, q: int) -> float:
    """ALIE's z_max = Phi^-1((n - s) / n), s = floor(n/2 + 1) - q (Baruch et al., NeurIPS 2019, Sec. 3): n inputs to
    the aggregator, q of them Byzantine, s the honest inputs the attack must win over to sway a majority."""
    s = math.floor(n / 2 + 1) - q
    if not 0 < s < n:
        raise AttackError(f"alie z=auto needs 0 < s < n with s = floor(n/2+1) - q; n={n}, q={q} gives s={s}")
    return NormalDist().inv_cdf((n - s) / n)


def alie_z_auto(rows: int, byzantine_rows: int) -> float:
    """``z="auto"``: :func:`alie_z_max` for the aggregator's ``rows`` inputs of which ``byzantine_rows`` are
    Byzantine. When the Byzantine rows are already a majority (s <= 0: no honest supporter is needed) the formula
    has no finite value; s = 1 is used, the largest z it gives for ``rows``. 0.0 when no row is Byzantine (nothing
    is rewritten)."""
    if byzantine_rows <= 0:
        return 0.0
    s = max(1, math.floor(rows / 2 + 1) - byzantine_rows)
    return alie_z_max(rows, math.floor(rows / 2 + 1) - s)


def _weighted_stats(honest: np.ndarray, weights: np.ndarray, z: float | None) -> np.ndarray:
    """Coordinate-wise weighted mean of the rows (z None), or mean + z * (population) std, as float32 (d,)."""
    total = weights.sum()
    if total <= 0:
        raise AttackError("the attack statistics need at least one honest replica slot; every slot is Byzantine")
    w = weights / total
    out = np.empty(honest.shape[1], dtype=np.float32)
    for start in range(0, honest.shape[1], _STATS_BLOCK):
        block = honest[:, start:start + _STATS_BLOCK].astype(np.float64)
        mu = w @ block
        if z is None:
            out[start:start + _STATS_BLOCK] = mu
            continue
        block -= mu
        out[start:start + _STATS_BLOCK] = mu + z * np.sqrt(w @ (block * block))
    return out


Rewrite = Callable[[np.ndarray, tuple[int, ...], "_Context"], None]


@dataclass(frozen=True)
class _Context:
    c: float
    z: float
    slots_all: np.ndarray
    slots_honest: np.ndarray
    alie_honest_only: bool


def _rev_grad(values: np.ndarray, files: tuple[int, ...], ctx: _Context) -> None:
    for i in files:
        np.multiply(values[i], np.float32(-ctx.c), out=values[i])


def _constant(values: np.ndarray, files: tuple[int, ...], ctx: _Context) -> None:
    values[list(files)] = np.float32(-ctx.c)


def _foe(values: np.ndarray, files: tuple[int, ...], ctx: _Context) -> None:
    vector = _weighted_stats(values, ctx.slots_honest, None)
    vector *= np.float32(-ctx.c)
    values[list(files)] = vector


def _alie(values: np.ndarray, files: tuple[int, ...], ctx: _Context) -> None:
    weights = ctx.slots_honest if ctx.alie_honest_only else ctx.slots_all
    values[list(files)] = _weighted_stats(values, weights, ctx.z)


#: The registry: attack -> in-place rewrite of the corrupted rows (statistics taken before any row changes).
ATTACKS: dict[Attack, Rewrite] = {
    Attack.REV_GRAD: _rev_grad,
    Attack.CONSTANT: _constant,
    Attack.FOE: _foe,
    Attack.ALIE: _alie,
}


def simulate_attack(attack: Attack | str, honest: np.ndarray, placement: Placement, byzantine: Collection[int], *,
                    c: float = 100.0, z: float | Literal["auto"] = 1.0, alie_honest_only: bool = False,
                    inplace: bool = False) -> AttackResult:
    """Apply ``attack`` to the (f, d) float32 honest file gradients for the Byzantine worker set ``byzantine``.

    Returns the per-file values the vote lets through (corrupted files carry the attack vector) and the corrupted
    files. ``inplace=True`` overwrites the corrupted rows of ``honest`` and allocates no (f, d) copy.
    """
    kind = parse_attack(attack)
    if not isinstance(honest, np.ndarray) or honest.dtype != np.float32 or honest.ndim != 2:
        raise AttackError(f"honest gradients must be a 2-D float32 array (f, d), got "
                          f"{getattr(honest, 'dtype', type(honest).__name__)} {getattr(honest, 'shape', '')}")
    if honest.shape[0] != placement.f:
        raise AttackError(f"honest gradients have {honest.shape[0]} rows but the placement has f={placement.f} files")
    if not math.isfinite(c):
        raise AttackError(f"attack constant c must be finite, got {c}")
    bad = check_byzantine_set(placement, byzantine)
    counts = byzantine_holders(placement, bad)
    slots_all = np.array([len(ws) for ws in placement.file_workers], dtype=np.float64)
    files = tuple(int(i) for i in np.flatnonzero(counts >= placement.r_prime))
    z_value = alie_z_auto(placement.f, len(files)) if z == "auto" else float(z)
    if not math.isfinite(z_value):
        raise AttackError(f"alie z must be a finite number or 'auto', got {z!r}")
    values = honest if inplace else honest.copy()
    if files:
        ctx = _Context(float(c), z_value, slots_all, slots_all - counts, alie_honest_only)
        ATTACKS[kind](values, files, ctx)
    return AttackResult(values, files, simulated_vote(placement, bad))
