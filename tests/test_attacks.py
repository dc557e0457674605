"""Simulated attacks: hand-computed values on a DETOX placement, the vote they imply, memory behaviour, errors."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from byzantine.analysis import distorted, worst_case
from byzantine.attacks import ATTACKS, Attack, alie_z_auto, alie_z_max, corrupted_files, simulate_attack
from byzantine.errors import AttackError
from byzantine.placement import build_placement

# DETOX, K=9, r=3: files 0, 1, 2 held by groups (0,1,2), (3,4,5), (6,7,8); r' = 2.
# Byzantine {0, 1, 3}: file 0 has 2 Byzantine holders (corrupted), file 1 one, file 2 none.
DETOX = build_placement("detox", 9, 3)
BYZ = (0, 1, 3)
H = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)


def run(attack: str, **kw) -> np.ndarray:
    res = simulate_attack(attack, H, DETOX, BYZ, **kw)
    assert res.corrupted == (0,)
    np.testing.assert_array_equal(res.values[1:], H[1:])  # files the attack cannot win stay honest
    return res.values[0]


def test_registry_covers_every_attack() -> None:
    assert set(ATTACKS) == set(Attack) and [a.value for a in Attack] == ["rev-grad", "constant", "foe", "alie"]


def test_rev_grad_and_constant() -> None:
    np.testing.assert_array_equal(run("rev-grad"), [-100, -200])
    np.testing.assert_array_equal(run("rev-grad", c=2.0), [-2, -4])
    np.testing.assert_array_equal(run("constant", c=7.0), [-7, -7])


def test_foe_uses_the_honest_slots() -> None:
    # honest holders per file: 1, 2, 3 -> mean (1*1 + 2*3 + 3*5)/6 = 11/3, (1*2 + 2*4 + 3*6)/6 = 14/3
    np.testing.assert_allclose(run("foe"), [-1100 / 3, -1400 / 3], rtol=1e-6)


def test_alie_statistics() -> None:
    # all 9 slots (the original code): mean (3, 4), population std sqrt(8/3) in both coordinates
    sd = np.sqrt(8 / 3)
    np.testing.assert_allclose(run("alie"), [3 + sd, 4 + sd], rtol=1e-6)
    np.testing.assert_allclose(run("alie", z=2.0), [3 + 2 * sd, 4 + 2 * sd], rtol=1e-6)
    # honest slots only: weights 1, 2, 3 -> mean 11/3, variance 20/9
    hd = np.sqrt(20 / 9)
    np.testing.assert_allclose(run("alie", alie_honest_only=True), [11 / 3 + hd, 14 / 3 + hd], rtol=1e-6)
    assert alie_z_max(9, 3) == pytest.approx(norm.ppf(7 / 9), rel=1e-9)  # s = floor(9/2 + 1) - 3 = 2
    # auto: the aggregator's rows, f = 3 files of which 1 is corrupted: s = floor(3/2 + 1) - 1 = 1, Phi^-1(2/3)
    z = norm.ppf(2 / 3)
    np.testing.assert_allclose(run("alie", z="auto"), [3 + z * sd, 4 + z * sd], rtol=1e-6)
    with pytest.raises(AttackError, match="n=9, q=5 gives s=0"):
        alie_z_max(9, 5)


def test_alie_auto_z_counts_the_aggregators_rows() -> None:
    """z="auto" is ALIE's z_max for n = f rows with m = the corrupted rows (the baseline: n = K, m = q)."""
    assert alie_z_auto(15, 2) == pytest.approx(norm.ppf(9 / 15), rel=1e-9) == pytest.approx(alie_z_max(15, 2))
    assert alie_z_auto(25, 1) == pytest.approx(norm.ppf(13 / 25), rel=1e-9)  # MOLS K=15, q=2: 1 of 25 files
    assert alie_z_auto(5, 3) == pytest.approx(norm.ppf(4 / 5), rel=1e-9)  # a Byzantine majority: s clamped to 1
    assert alie_z_auto(5, 0) == 0.0
    mols = build_placement("mols", 15, 3)
    byz = worst_case(mols, 2).worst_set
    honest = np.random.default_rng(0).standard_normal((mols.f, 4)).astype(np.float32)
    res = simulate_attack("alie", honest, mols, byz, z="auto")
    assert len(res.corrupted) == 1
    fixed = simulate_attack("alie", honest, mols, byz, z=float(norm.ppf(13 / 25)))
    np.testing.assert_array_equal(res.values, fixed.values)


def test_vote_flags_losers_on_both_sides() -> None:
    res = simulate_attack("constant", H, DETOX, BYZ)
    # worker 2 (honest) lost file 0 to the Byzantine majority; worker 3 (Byzantine) lost file 1
    assert res.vote.disagreeing == (2, 3)
    assert res.vote.files_won == (0, 1, 2)


def test_inplace_writes_the_input_and_copy_does_not() -> None:
    honest = H.copy()
    res = simulate_attack("rev-grad", honest, DETOX, BYZ)
    assert res.values is not honest and np.array_equal(honest, H)
    res = simulate_attack("rev-grad", honest, DETOX, BYZ, inplace=True)
    assert res.values is honest and honest[0, 0] == -100


def test_corrupted_files_match_the_worst_case_analysis() -> None:
    placement = build_placement("mols", 15, 3)
    for q in (2, 3, 4):
        found = worst_case(placement, q)
        assert len(corrupted_files(placement, found.worst_set)) == found.c_max == distorted(placement, found.worst_set)
    grads = np.random.default_rng(0).standard_normal((placement.f, 64)).astype(np.float32)
    found = worst_case(placement, 4)
    res = simulate_attack("alie", grads, placement, found.worst_set)
    assert len(res.corrupted) == found.c_max > 0
    assert np.all(res.values[list(res.corrupted)] == res.values[res.corrupted[0]])  # one vector for all


def test_no_byzantines_changes_nothing() -> None:
    res = simulate_attack("foe", H, DETOX, ())
    assert res.corrupted == () and np.array_equal(res.values, H) and res.vote.disagreeing == ()


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"attack": "gauss"}, "unknown attack 'gauss'"),
    ({"honest": H[:2]}, "have 2 rows but the placement has f=3 files"),
    ({"honest": H.astype(np.float64)}, "2-D float32 array (f, d), got float64"),
    ({"byzantine": (0, 9)}, "Byzantine workers [9] out of range 0..8 (K=9)"),
    ({"byzantine": (1, 1)}, "repeats a worker"),
    ({"c": float("inf")}, "c must be finite"),
    ({"z": float("nan"), "attack": "alie"}, "alie z must be a finite number"),
])
def test_attack_errors(kwargs: dict, needle: str) -> None:
    args = {"attack": "constant", "honest": H, "placement": DETOX, "byzantine": BYZ} | kwargs
    with pytest.raises(AttackError) as err:
        simulate_attack(**args)
    assert needle in str(err.value)
