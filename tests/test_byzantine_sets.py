"""Choosing the Byzantine workers (random, fixed, worst, DETOX attacks) and the default Byzantine count s."""
from __future__ import annotations

import pytest

from byzantine.aggregators import default_byzantine_count
from byzantine.analysis import worst_case
from byzantine.attacks import corrupted_files
from byzantine.byzantine_sets import ByzantineChoice, detox_byzantines, make_schedule
from byzantine.errors import AggregationError, AttackError
from byzantine.placement import build_placement

DETOX = build_placement("detox", 15, 3)  # groups (0,1,2), (3,4,5), ..., (12,13,14); r' = 2
MOLS = build_placement("mols", 15, 3)


@pytest.mark.parametrize(("attack", "q", "expected"), [
    ("worst", 5, (0, 1, 3, 4, 6)),            # 2 per group, the remainder in the next group
    ("worst", 11, (0, 1, 2, 3, 4, 6, 7, 9, 10, 12, 13)),  # every group won, then the third slots
    ("benign", 5, (0, 3, 6, 9, 12)),           # one per group
    ("benign", 7, (0, 1, 3, 4, 6, 9, 12)),
    ("whole-group", 4, (0, 1, 2, 3)),
])
def test_detox_attacks(attack: str, q: int, expected: tuple[int, ...]) -> None:
    assert detox_byzantines(attack, DETOX, q) == expected
    assert make_schedule("worst", DETOX, q, detox_attack=attack).at(7) == expected


def test_detox_attacks_corrupt_what_they_promise() -> None:
    assert len(corrupted_files(DETOX, detox_byzantines("worst", DETOX, 6))) == 3 == 6 // DETOX.r_prime
    assert corrupted_files(DETOX, detox_byzantines("benign", DETOX, 5)) == ()
    assert len(corrupted_files(DETOX, detox_byzantines("whole-group", DETOX, 6))) == 2


def test_worst_on_byzshield_uses_the_analysis() -> None:
    schedule = make_schedule("worst", MOLS, 4)
    found = worst_case(MOLS, 4)
    assert schedule.at(0) == schedule.at(99) == tuple(sorted(found.worst_set))
    assert len(corrupted_files(MOLS, schedule.at(0))) == found.c_max


def test_random_is_fresh_per_step_and_reproducible() -> None:
    schedule = make_schedule(ByzantineChoice.RANDOM, MOLS, 4, seed=11)
    sets = [schedule.at(t) for t in range(20)]
    assert all(len(set(s)) == 4 and all(0 <= w < 15 for w in s) and list(s) == sorted(s) for s in sets)
    assert len(set(sets)) > 10
    assert sets == [make_schedule("random", MOLS, 4, seed=11).at(t) for t in range(20)]
    assert sets != [make_schedule("random", MOLS, 4, seed=12).at(t) for t in range(20)]


def test_fixed() -> None:
    assert make_schedule("fixed", MOLS, 3, fixed=[9, 2, 4]).at(5) == (2, 4, 9)


@pytest.mark.parametrize(("call", "needle"), [
    (lambda: make_schedule("fixed", MOLS, 3), "needs the list of Byzantine workers"),
    (lambda: make_schedule("fixed", MOLS, 3, fixed=[1, 1, 2]), "needs q=3 distinct workers, got 2 distinct of 3"),
    (lambda: make_schedule("fixed", MOLS, 2, fixed=[1, 15]), "[15] out of range 0..14"),
    (lambda: make_schedule("random", MOLS, 2, fixed=[1, 2]), "applies to choice 'fixed'"),
    (lambda: make_schedule("worst", MOLS, 2, detox_attack="benign"), "applies to choice 'worst' on a group"),
    (lambda: make_schedule("random", DETOX, 2, detox_attack="benign"), "got choice 'random' on detox"),
    (lambda: make_schedule("sometimes", MOLS, 2), "unknown Byzantine choice 'sometimes'"),
    (lambda: make_schedule("random", MOLS, 16), "q must be an integer in [0, K=15], got 16"),
    (lambda: detox_byzantines("worst", MOLS, 2), "need a group placement"),
    (lambda: detox_byzantines("sneaky", DETOX, 2), "unknown DETOX attack 'sneaky'"),
])
def test_choice_errors(call, needle: str) -> None:
    with pytest.raises(AttackError) as err:
        call()
    assert needle in str(err.value)


def test_default_byzantine_count() -> None:
    assert default_byzantine_count(build_placement("baseline", 15, 1), 4) == 4
    assert default_byzantine_count(DETOX, 5) == 2
    assert default_byzantine_count(build_placement("maj_vote", 15, 3), 7) == 3
    for q in (0, 3, 5):
        assert default_byzantine_count(MOLS, q) == worst_case(MOLS, q).c_max
    with pytest.raises(AggregationError, match=r"q must be an integer in \[0, K=15\], got 16"):
        default_byzantine_count(MOLS, 16)
