"""Which workers are Byzantine at each step: random, fixed, or the worst case (ByzShield, MLSys 2021, Sec. 6).

``random`` draws a fresh set of q workers every step from ``default_rng([seed, step])``, so step t's set depends
only on (seed, t) and a resumed run sees the same sets. ``fixed`` is a user-given list. ``worst`` is the set that
corrupts c_max(q) files, from the worst-case analysis; on DETOX-style group placements (DETOX, plain majority
vote) it is one of the original DETOX attacks on groups, all fixed for the run:

* ``worst``: r' Byzantines in each group in turn (group 0 first), the remainder in the next group;
* ``benign``: one Byzantine per group in turn, then a second one per group, ...;
* ``whole-group``: group 0 entirely, then group 1, ...
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from byzantine.errors import AttackError
from byzantine.placement import Scheme

if TYPE_CHECKING:
    from byzantine.placement import Placement


class ByzantineChoice(str, enum.Enum):
    """How the Byzantine set is chosen; values are the CLI names."""

    RANDOM = "random"
    FIXED = "fixed"
    WORST = "worst"


class DetoxAttack(str, enum.Enum):
    """The original DETOX attacks on groups; values are the CLI names."""

    WORST = "worst"
    BENIGN = "benign"
    WHOLE_GROUP = "whole-group"


Groups = tuple[tuple[int, ...], ...]


def _detox_worst(groups: Groups, r_prime: int) -> list[int]:
    return [w for g in groups for w in g[:r_prime]] + [w for g in groups for w in g[r_prime:]]


def _detox_benign(groups: Groups, r_prime: int) -> list[int]:
    return [g[pos] for pos in range(max(map(len, groups))) for g in groups if pos < len(g)]


def _detox_whole_group(groups: Groups, r_prime: int) -> list[int]:
    return [w for g in groups for w in g]


#: DETOX attack -> the order in which it makes workers Byzantine (the first q are).
DETOX_ORDERS: dict[DetoxAttack, Callable[[Groups, int], list[int]]] = {
    DetoxAttack.WORST: _detox_worst,
    DetoxAttack.BENIGN: _detox_benign,
    DetoxAttack.WHOLE_GROUP: _detox_whole_group,
}

_Choice = TypeVar("_Choice", bound=enum.Enum)


def _parse(enum_type: type[_Choice], value: object, what: str) -> _Choice:
    try:
        return enum_type(value)
    except ValueError:
        raise AttackError(f"unknown {what} {value!r}; known: {', '.join(e.value for e in enum_type)}") from None


def is_group_placement(placement: Placement) -> bool:
    """Whether the placement is DETOX-style (DETOX, plain majority vote): disjoint groups of r workers, one file
    per group."""
    return placement.scheme in (Scheme.DETOX, Scheme.MAJ_VOTE)


def detox_byzantines(attack: DetoxAttack | str, placement: Placement, q: int) -> tuple[int, ...]:
    """The Byzantine set of DETOX attack ``attack`` with q workers on a group placement (sorted)."""
    kind = _parse(DetoxAttack, attack, "DETOX attack")
    if not is_group_placement(placement):
        raise AttackError(f"DETOX attacks need a group placement (detox or maj_vote); got {placement.scheme.value}")
    _check_q(placement, q)
    return tuple(sorted(DETOX_ORDERS[kind](placement.file_workers, placement.r_prime)[:q]))


def _check_q(placement: Placement, q: object) -> int:
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 0 <= q <= placement.K:
        raise AttackError(f"q must be an integer in [0, K={placement.K}], got {q!r}")
    return int(q)


@dataclass(frozen=True)
class ByzantineSchedule:
    """The Byzantine set of every step. Build it with :func:`make_schedule`; call :meth:`at` each step."""

    choice: ByzantineChoice
    K: int
    q: int
    seed: int
    fixed_set: tuple[int, ...] | None

    def at(self, step: int) -> tuple[int, ...]:
        """The sorted Byzantine workers at ``step`` (>= 0)."""
        if self.fixed_set is not None:
            return self.fixed_set
        if step < 0:
            raise AttackError(f"step must be >= 0, got {step}")
        rng = np.random.default_rng([self.seed, step])
        return tuple(sorted(int(w) for w in rng.choice(self.K, size=self.q, replace=False)))


def make_schedule(choice: ByzantineChoice | str, placement: Placement, q: int, *, seed: int = 0,
                  fixed: Sequence[int] | None = None, detox_attack: DetoxAttack | str | None = None,
                  time_limit: float | None = None) -> ByzantineSchedule:
    """Resolve the Byzantine-set choice once for a run.

    ``fixed``: the workers for ``choice="fixed"`` (exactly q of them). ``detox_attack``: for ``choice="worst"`` on a
    group placement, which DETOX attack (default ``worst``). ``time_limit``: for the worst-case search on ByzShield
    placements (the best set found when it runs out).
    """
    kind = _parse(ByzantineChoice, choice, "Byzantine choice")
    q = _check_q(placement, q)
    if detox_attack is not None and (kind is not ByzantineChoice.WORST or not is_group_placement(placement)):
        raise AttackError(f"a DETOX attack applies to choice 'worst' on a group placement; got choice "
                          f"{kind.value!r} on {placement.scheme.value}")
    if fixed is not None and kind is not ByzantineChoice.FIXED:
        raise AttackError(f"a fixed worker list applies to choice 'fixed', not {kind.value!r}")
    fixed_set = CHOOSERS[kind](placement, q, fixed, detox_attack, time_limit)
    return ByzantineSchedule(kind, placement.K, q, int(seed), fixed_set)


def _random(placement: Placement, q: int, fixed, detox_attack, time_limit) -> None:
    return None


def _fixed(placement: Placement, q: int, fixed: Sequence[int] | None, detox_attack, time_limit) -> tuple[int, ...]:
    if fixed is None:
        raise AttackError("choice 'fixed' needs the list of Byzantine workers")
    workers = sorted(int(w) for w in fixed)
    if len(workers) != q or len(set(workers)) != q:
        raise AttackError(f"choice 'fixed' needs q={q} distinct workers, got {len(set(workers))} distinct of "
                          f"{len(workers)}: {workers}")
    out = [w for w in workers if not 0 <= w < placement.K]
    if out:
        raise AttackError(f"fixed Byzantine workers {out} out of range 0..{placement.K - 1}")
    return tuple(workers)


def _worst(placement: Placement, q: int, fixed, detox_attack: DetoxAttack | str | None,
           time_limit: float | None) -> tuple[int, ...]:
    if is_group_placement(placement):
        return detox_byzantines(detox_attack or DetoxAttack.WORST, placement, q)
    from byzantine.analysis import worst_case

    return tuple(sorted(worst_case(placement, q, time_limit=time_limit).worst_set))


#: The registry: choice -> the fixed set for the run (None: drawn per step).
CHOOSERS: dict[ByzantineChoice, Callable[..., tuple[int, ...] | None]] = {
    ByzantineChoice.RANDOM: _random,
    ByzantineChoice.FIXED: _fixed,
    ByzantineChoice.WORST: _worst,
}
