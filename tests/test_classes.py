"""Determinism classes on the PS: fingerprint validation, grouping, the tolerance, and the exact-vote refusal."""
from __future__ import annotations

import numpy as np
import pytest

from byzantine.errors import ByzantineConfigError
from byzantine.sketch import DEFAULT_PARAMS, SketchReply, l2_norm, sketch
from byzantine.tolerance import DEFAULT_CAP as TOLERANCE_CAP
from byzantine.tolerance import Reference
from byzantine.vote import VoteMode
from shield_ps.classes import FingerprintError, FleetClasses, parse_fingerprint, probe_request, tolerance
from shield_ps.errors import TrainingError

SEED = b"p" * 32
RNG = np.random.default_rng(0)
G = RNG.standard_normal(5000).astype(np.float32)


def _reply(gradient: np.ndarray, digest: bytes, **env: object) -> dict:
    return {"num_params": 5000, "worker": 0, "environment": {"torch": "2.14", "threads": 1, **env},
            "probe_digest": digest, "probe_sketch": sketch(gradient, SEED).astype("<f8").tobytes(),
            "probe_norm": l2_norm(gradient)}


def _near(relative: float) -> np.ndarray:
    direction = RNG.standard_normal(G.shape[0])
    return (G + relative * np.linalg.norm(G) * direction / np.linalg.norm(direction)).astype(np.float32)


def test_fingerprints_group_into_classes_and_set_the_tolerance() -> None:
    emitted: list[tuple[str, dict]] = []
    tols: list[float] = []
    fleet = FleetClasses(VoteMode.AUTO, 5000, None, lambda kind, **f: emitted.append((kind, f)), tols.append)
    assert fleet.job_fields()["probe"] == probe_request(fleet.probe_seed)
    fleet.probe_seed = SEED
    assert fleet.admit(0, _reply(G, b"a" * 32, cpu_capability="AVX512")) is None
    assert fleet.admit(1, _reply(_near(2e-4), b"b" * 32, cpu_capability="AVX2")) is None
    assert fleet.admit(2, _reply(G, b"a" * 32, cpu_capability="AVX512")) is None
    fleet.check_start()
    assert fleet.registry.classes() == {"c-" + (b"a" * 32).hex()[:8]: [0, 2], "c-" + (b"b" * 32).hex()[:8]: [1]}
    assert tols[-1] == pytest.approx(10 * 2e-4, rel=0.3) == fleet.tolerance
    kind, fields = emitted[-1]
    assert kind == "classes" and fields["vote"] == "auto" and len(fields["classes"]) == 2
    assert "cpu_capability=AVX2" in fleet.registry.describe() and "torch" not in fleet.registry.describe()
    fleet.leave(1)
    assert len(fleet.registry.classes()) == 1 and fleet.class_of(1) == "unknown" and fleet.class_of(0).startswith("c-")


def test_exact_vote_without_a_majority_class_is_refused_and_a_later_class_refused() -> None:
    fleet = FleetClasses(VoteMode.EXACT, 5000, None, lambda *a, **k: None, lambda t: None)
    fleet.admit(0, _reply(G, b"a" * 32, cpu_capability="AVX512"))
    fleet.admit(1, _reply(_near(1e-6), b"b" * 32, cpu_capability="AVX2"))
    with pytest.raises(TrainingError, match=r"2 determinism classes, none of them a majority.*cpu_capability=AVX2"
                                            r".*--vote auto"):
        fleet.check_start()
    late = FleetClasses(VoteMode.EXACT, 5000, None, lambda *a, **k: None, lambda t: None)
    late.admit(0, _reply(G, b"a" * 32))
    assert late.check_start() == {}
    assert "differs from the run's" in late.admit(1, _reply(G, b"b" * 32))
    assert late.admit(2, _reply(G, b"a" * 32)) is None


def test_exact_vote_excludes_a_minority_class_instead_of_failing_the_run() -> None:
    fleet = FleetClasses(VoteMode.EXACT, 5000, None, lambda *a, **k: None, lambda t: None)
    for worker in range(4):
        fleet.admit(worker, _reply(G, b"a" * 32, cpu_capability="AVX512"))
    fleet.admit(4, _reply(_near(1e-3), b"f" * 32, cpu_capability="AVX512"))  # a fake probe, the same environment
    fleet.admit(5, _reply(_near(1e-6), b"b" * 32, cpu_capability="AVX2"))  # an honest agent of another class
    excluded = fleet.check_start()
    assert sorted(excluded) == [4, 5]
    assert "matches the majority's" in excluded[4] and "lying" in excluded[4]
    assert "cpu_capability=AVX2 (majority AVX512)" in excluded[5] and "--vote auto" in excluded[5]
    assert list(fleet.registry.classes()) == ["c-" + (b"a" * 32).hex()[:8]]


def test_tolerance_is_clamped_and_overridable() -> None:
    assert tolerance(0.0, 431_080) == 1e-6
    assert tolerance(3.5e-7, 431_080) == pytest.approx(3.5e-6)
    assert tolerance(0.1, 431_080) == TOLERANCE_CAP
    assert tolerance(0.0, 11_173_962) == pytest.approx(20 * 1.9457e-7, rel=1e-3)  # the quantisation floor
    assert tolerance(0.1, 431_080, override=0.2) == 0.2
    with pytest.raises(ByzantineConfigError, match="--vote-tol"):
        tolerance(0.0, 431_080, override=1e-9)
    with pytest.raises(ByzantineConfigError, match="--vote-tol"):
        tolerance(0.0, 431_080, override=0.9)


@pytest.mark.parametrize("change, match", [
    ({"environment": "x"}, "environment"), ({"environment": {"k": [1]}}, "plain"),
    ({"environment": {f"k{i}": 1 for i in range(40)}}, "32 entries"), ({"probe_digest": b"x"}, "32 bytes"),
    ({"probe_sketch": b"x" * 8}, "bytes"), ({"probe_norm": float("nan")}, "finite"),
    ({"probe_sketch": np.full(DEFAULT_PARAMS.size, np.inf).tobytes()}, "finite"),
])
def test_malformed_fingerprints_are_refused(change: dict, match: str) -> None:
    with pytest.raises(FingerprintError, match=match):
        parse_fingerprint(0, {**_reply(G, b"a" * 32), **change})


def test_an_agent_without_a_probe_is_of_unknown_class() -> None:
    assert parse_fingerprint(3, {"num_params": 1}).class_id == "unknown"


# ---- no unauthenticated claim sets the tolerance (issue 26) ------------------------------------------------------

def _fleet(quorum: int = 2, reference: Reference | None = None) -> tuple[FleetClasses, list[float], list[dict]]:
    tols: list[float] = []
    events: list[dict] = []
    fleet = FleetClasses(VoteMode.AUTO, 5000, None, lambda kind, **f: events.append(f), tols.append, quorum=quorum)
    fleet.probe_seed = SEED
    fleet.reference = reference
    return fleet, tols, events


def _reference(distance: float | None = 0.7) -> Reference:
    return Reference(b"a" * 32, SketchReply(sketch(G, SEED), l2_norm(G)), distance)


def test_one_fake_probe_moves_the_tolerance_at_most_twofold() -> None:
    fleet, tols, events = _fleet(quorum=3, reference=_reference())
    for worker in range(4):
        fleet.admit(worker, _reply(G, b"a" * 32))
    fleet.check_start()
    honest = fleet.tolerance
    assert honest == pytest.approx(1e-6)  # one class, the PS's own: the floor
    fleet.admit(4, _reply(_near(0.04), b"f" * 32))  # a liar's class of one: claims a 4 % spread
    assert fleet.tolerance <= 2 * honest and tols[-1] == fleet.tolerance
    assert events[-1]["unattested"] == [4] and events[-1]["unattested_spread"] > 0.03
    fleet.leave(4)  # recomputed on leave
    assert fleet.tolerance == honest


def test_a_class_counts_once_a_quorum_of_its_members_attests_its_probe() -> None:
    fleet, _, _ = _fleet(quorum=3, reference=_reference())
    for worker in range(3):
        fleet.admit(worker, _reply(G, b"a" * 32))
    fleet.check_start()
    other = _near(2e-4)
    fleet.admit(3, _reply(other, b"b" * 32))
    fleet.admit(4, _reply(other, b"b" * 32))
    assert fleet.tolerance == pytest.approx(1.5e-6)  # two members are not a quorum of 3: held to 1.5x the floor
    fleet.admit(5, _reply(other, b"b" * 32))
    assert fleet.tolerance == pytest.approx(10 * 2e-4, rel=0.3)  # three are: the real spread counts
    attested = fleet.tolerance
    fleet.admit(6, _reply(_near(5e-2), b"b" * 32))  # a stealth liar: the class's digest, its own sketch
    assert attested < fleet.tolerance <= 2 * attested
    assert fleet.decision is not None and fleet.decision.unattested == (6,)


def test_a_probe_contradicting_the_ps_own_computation_is_refused() -> None:
    fleet, _, _ = _fleet(reference=_reference())
    assert fleet.admit(0, _reply(G, b"a" * 32)) is None
    why = fleet.admit(1, _reply(_near(1e-2), b"a" * 32))  # the PS's digest with another sketch: a proven lie
    assert why is not None and "lying" in why
    assert 1 not in fleet.registry.members


def test_the_cap_follows_the_model_file_distance() -> None:
    fleet, _, _ = _fleet(quorum=1, reference=_reference(distance=0.14))
    fleet.admit(0, _reply(G, b"a" * 32))
    fleet.admit(1, _reply(_near(0.2), b"b" * 32))  # an attested (quorum 1) but huge spread
    fleet.check_start()
    assert fleet.tolerance == pytest.approx(0.14 / 14)
    unmeasured, _, _ = _fleet(quorum=1, reference=_reference(distance=None))
    unmeasured.admit(0, _reply(G, b"a" * 32))
    unmeasured.admit(1, _reply(_near(0.2), b"b" * 32))
    unmeasured.check_start()
    assert unmeasured.tolerance == TOLERANCE_CAP
