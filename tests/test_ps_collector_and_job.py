"""The PS's handling of agents' DIGESTS (hostile input) and the resolution of a run's configuration."""
from __future__ import annotations

import asyncio

import pytest

from byzantine.errors import AggregationError, PlacementError
from shield_ps.collector import DigestRejected, StepCollector
from shield_ps.config import ServeConfig, diff_training_fields
from shield_ps.errors import ConfigError
from shield_ps.job import resolve_job

DIGEST = bytes(32)


def _collector() -> StepCollector:
    return StepCollector(step=5, num_files=3, expected={0: (0, 1), 1: (1, 2), 2: ()})


def _header(**changes: object) -> dict:
    return {"step": 5, "file": 1, "digest": DIGEST, "loss": 0.5, "seconds": 0.1, **changes}


def test_collector_completes_when_every_expected_digest_is_in() -> None:
    async def go() -> None:
        c = _collector()
        assert not c.complete.is_set()
        for worker, file in ((0, 0), (0, 1), (1, 1)):
            assert c.add(worker, _header(file=file))
        assert c.worker_done(0) and not c.worker_done(1) and not c.complete.is_set()
        assert c.missing_workers() == (1,)
        assert c.add(1, _header(file=2, loss=None))
        assert c.complete.is_set()
        assert c.replies == [{0: DIGEST}, {0: DIGEST, 1: DIGEST}, {1: DIGEST}]
        assert c.losses == {0: [0.5, 0.5], 1: [0.5]}

    asyncio.run(go())


def test_a_lost_worker_stops_being_waited_for() -> None:
    async def go() -> None:
        c = _collector()
        c.add(0, _header(file=0))
        c.add(0, _header(file=1))
        c.drop_worker(1)
        assert c.complete.is_set() and c.missing_workers() == ()

    asyncio.run(go())


def test_stale_digests_are_ignored() -> None:
    async def go() -> None:
        assert _collector().add(0, _header(step=4)) is False

    asyncio.run(go())


@pytest.mark.parametrize("worker,changes,why", [
    (0, {"step": 6}, "future step"),
    (0, {"step": "5"}, "'step' must be an integer"),
    (0, {"file": 2}, "does not hold"),
    (2, {"file": 0}, "does not hold"),
    (0, {"file": True}, "'file' must be an integer"),
    (0, {"digest": b"short"}, "32 bytes"),
    (0, {"digest": "x" * 32}, "32 bytes"),
    (0, {"loss": float("nan")}, "finite"),
    (0, {"loss": "0.5"}, "finite"),
    (0, {"seconds": -1}, "'seconds' must be in"),
    (0, {"seconds": None}, "'seconds' must be a finite number"),
])
def test_malformed_digests_are_rejected(worker: int, changes: dict, why: str) -> None:
    async def go() -> None:
        with pytest.raises(DigestRejected, match=why):
            _collector().add(worker, _header(**changes))

    asyncio.run(go())


def test_a_second_digest_for_the_same_file_is_rejected() -> None:
    async def go() -> None:
        c = _collector()
        c.add(0, _header(file=1))
        with pytest.raises(DigestRejected, match="second digest"):
            c.add(0, _header(file=1))

    asyncio.run(go())


def test_resolve_job_derives_sizes_and_the_byzantine_bound() -> None:
    plan = resolve_job(ServeConfig(max_steps=10, byzantine=3, attack="alie", aggregator="multi-krum"))
    assert (plan.placement.K, plan.placement.f, plan.batch_size, plan.samples_per_file) == (15, 25, 250, 10)
    assert plan.byzantine_bound == 3 and plan.aggregator_kwargs == {"s": 3}
    assert plan.byzantine is not None and len(plan.byzantine.at(0)) == 3
    assert plan.job_header(0)["files"] == list(plan.placement.worker_files[0])


def test_maj_vote_averages_the_group_winners() -> None:
    plan = resolve_job(ServeConfig(scheme="maj_vote", workers=3, replication=3, max_steps=1))
    assert plan.aggregator.value == "mean" and plan.notes


@pytest.mark.parametrize("changes,error,message", [
    ({"batch_size": 7}, ConfigError, "multiple of the number of files f=25"),
    ({"local_agents": 16}, ConfigError, "exceeds --workers K=15"),
    ({"byzantine": 15}, ConfigError, "must be in 0..14"),
    ({"max_steps": None}, ConfigError, "exactly one of --epochs or --max-steps"),
    ({"workers": 16}, PlacementError, "l=5.33"),
    ({"aggregator": "bulyan", "byzantine": 5}, AggregationError, "n >= 4s\\+3"),
    ({"aggregator": "coord-median", "buckets": 26}, AggregationError, "--buckets must be in 1..f=25"),
])
def test_bad_configurations_fail_before_any_agent_starts(changes: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        resolve_job(ServeConfig(**{"max_steps": 10, **changes}))


def test_config_hash_covers_the_mathematics_only() -> None:
    base = ServeConfig(max_steps=10)
    assert base.replace(port=1, max_steps=99, threads=4, codec="zstd").config_hash() == base.config_hash()
    assert base.replace(lr=0.5).config_hash() != base.config_hash()
    assert diff_training_fields(base.to_dict(), base.replace(lr=0.5)) == ["lr: 0.01 -> 0.5"]
    assert ServeConfig.from_dict(base.to_dict()) == base
    with pytest.raises(ConfigError, match="unknown configuration fields: bogus"):
        ServeConfig.from_dict({**base.to_dict(), "bogus": 1})
