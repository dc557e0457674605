"""Determinism classes on the PS: fingerprint validation, grouping, the tolerance, and the exact-vote refusal."""
from __future__ import annotations

import numpy as np
import pytest

from shield_ps.byzantine.sketch import DEFAULT_PARAMS, l2_norm, sketch
from shield_ps.classes import (TOLERANCE_CAP, FingerprintError, FleetClasses, parse_fingerprint, probe_request,
                               tolerance)
from shield_ps.errors import ConfigError, TrainingError

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
    fleet = FleetClasses("auto", 5000, None, lambda kind, **f: emitted.append((kind, f)), tols.append)
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


def test_exact_vote_is_refused_over_two_classes_at_start_and_later() -> None:
    fleet = FleetClasses("exact", 5000, None, lambda *a, **k: None, lambda t: None)
    fleet.admit(0, _reply(G, b"a" * 32, cpu_capability="AVX512"))
    fleet.admit(1, _reply(_near(1e-6), b"b" * 32, cpu_capability="AVX2"))
    with pytest.raises(TrainingError, match=r"2 determinism classes.*cpu_capability=AVX2.*--vote auto"):
        fleet.check_start()
    late = FleetClasses("exact", 5000, None, lambda *a, **k: None, lambda t: None)
    late.admit(0, _reply(G, b"a" * 32))
    late.check_start()
    assert "differs from the run's" in late.admit(1, _reply(G, b"b" * 32))
    assert late.admit(2, _reply(G, b"a" * 32)) is None


def test_tolerance_is_clamped_and_overridable() -> None:
    assert tolerance(0.0, 431_080) == 1e-6
    assert tolerance(3.5e-7, 431_080) == pytest.approx(3.5e-6)
    assert tolerance(0.1, 431_080) == TOLERANCE_CAP
    assert tolerance(0.0, 11_173_962) == pytest.approx(20 * 1.9457e-7, rel=1e-3)  # the quantisation floor
    assert tolerance(0.1, 431_080, override=0.2) == 0.2
    with pytest.raises(ConfigError, match="--vote-tol"):
        tolerance(0.0, 431_080, override=1e-9)
    with pytest.raises(ConfigError, match="--vote-tol"):
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
