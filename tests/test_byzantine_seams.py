"""Issue 26 end to end: every guarantee docs/byzantine.md states about the seams of the vote, attacked by real
Byzantine agents on the wire (the adversary zoo, docs/adversary.md) in small in-process clusters over real TCP:
Ramanujan Case 2, K = 9, r = 3, LeNet on MNIST (tests/byzantine_zoo.py). Two determinism classes are modelled as in
the issue: the odd workers run ``other-class:3e-7``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from byzantine.placement import build_placement
from byzantine.worst_case import worst_case
from shield_ps.phases.exclusion import FIRST_EXCLUSION_STEPS
from shield_ps.phases.relay import RelayNode, plan_tree
from tests.byzantine_zoo import RunResult, run_cluster, zoo_config

pytestmark = pytest.mark.slow

K = 9
OTHER = "other-class:3e-7"
PLACEMENT = build_placement("rama_two", 9, 3, 3)


def two_classes(**byzantine: str) -> list[str | None]:
    """The two-class fleet with the given workers (as ``w<N>=spec``) replaced."""
    slots: list[str | None] = [OTHER if w % 2 else None for w in range(K)]
    for name, spec in byzantine.items():
        slots[int(name[1:])] = spec
    return slots


def tolerance(result: RunResult) -> float:
    return result.of("classes")[-1]["tolerance"]


def test_one_fake_probe_moves_the_tolerance_at_most_twofold(tmp_path: Path) -> None:
    clean = run_cluster(tmp_path / "clean", slots=two_classes(), max_steps=2)
    attacked = run_cluster(tmp_path / "fake", slots=two_classes(w8="fake-probe:0.04"), max_steps=2)
    assert clean.exit_code == attacked.exit_code == 0
    assert tolerance(attacked) <= 2 * tolerance(clean), (tolerance(attacked), tolerance(clean))  # was 0.05: x16,000
    classes = attacked.of("classes")[-1]
    assert classes["unattested"] == [8] and classes["unattested_spread"] > 0.03


def test_a_stealth_probe_in_the_ps_own_class_is_refused(tmp_path: Path) -> None:
    # worker 8 runs the default kernels, as the PS does: its probe digest is the PS's own, its sketch a lie
    # the refused agent never joins: the PS starts without it after --join-timeout (120 s by default)
    result = run_cluster(tmp_path, slots=two_classes(w8="stealth-probe:0.04"), max_steps=2, join_timeout=15.0)
    assert result.exit_code == 0 and len(result.of("step")) == 2
    classes = result.of("classes")[-1]
    assert 8 not in {w for c in classes["classes"] for w in c["workers"]}
    assert all(8 in e["erased"] for e in result.of("step"))  # refused at join: its files are erasures
    assert tolerance(result) < 1e-5  # the honest classes' 3e-6


def test_hiders_with_a_fake_probe_win_no_more_than_c_max_files(tmp_path: Path) -> None:
    """The issue's row 2: three hiders commit g + 0.04 ||g|| U and claim a 4 % probe spread. They took every file
    they held (224 of 225 file-steps), unseen. Now they are outvoted wherever they are a minority, and only the
    c_max(3) = 3 files where two of them meet carry their value, all counted."""
    hiders = worst_case(PLACEMENT, 3).worst_set
    slots = two_classes(**{f"w{w}": "hider:0.04 fake-probe:0.04" for w in hiders})
    result = run_cluster(tmp_path, slots=slots, max_steps=3, byzantine=3, byzantine_gen="fixed",
                         fixed_byzantine=tuple(hiders))
    steps = result.of("step")
    assert result.exit_code == 0 and len(steps) == 3
    for e in steps:
        assert e["files_corrupted"] <= 3 and e["files_won"] >= 6, e
        assert set(hiders) <= set(e["outvoted"]), e  # each holds a file with two honest holders
    assert tolerance(result) <= 2e-6


@pytest.mark.parametrize("fleet", ["one class", "two classes"])
def test_a_silent_disputer_costs_a_grace_not_the_sketch_deadline(tmp_path: Path, fleet: str) -> None:
    """The issue's row 3: a digest nobody else has and no sketch cost every step the sketch round's whole deadline
    (0.73 s -> 11.9 s), unblamed. Files with an exact winner no longer wait; a disputer of the winners' own class is
    outvoted at once, one of another class (only its sketch could absolve it) is slow, after one grace at most."""
    if fleet == "one class":
        slots: list[str | None] = [None] * (K - 1) + ["silent-disputer"]
    else:  # worker 7 is of the second class; the disputer claims it too
        slots = two_classes(w7=f"{OTHER} silent-disputer")
    culprit = K - 1 if fleet == "one class" else 7
    result = run_cluster(tmp_path, slots=slots, max_steps=3, upload_timeout=30.0)
    steps = result.of("step")
    assert result.exit_code == 0 and len(steps) == 3
    for e in steps:
        assert e["files_won"] == PLACEMENT.f, e
        assert culprit in (e["outvoted"] if fleet == "one class" else e["slow"] + e["outvoted"]), e
        assert e["times"]["vote"] < 10.0, e["times"]  # the sketch deadline is over 30 s


def test_a_grinding_centre_that_withholds_its_payload_is_slow_and_the_step_goes_on(tmp_path: Path) -> None:
    """The issue's row 4: it ground its digest to win the tie, then never answered FETCH, and the step waited its
    transfer deadline. Ties are keyed by the step's seed now, and a split file takes its group's other payloads after
    a hedge delay."""
    result = run_cluster(tmp_path, slots=two_classes(w8="grinding-centre"), max_steps=3, upload_timeout=30.0)
    steps = result.of("step")
    assert result.exit_code == 0 and len(steps) == 3
    for e in steps:
        assert e["files_dropped"] == 0, e
        assert e["times"].get("gather", 0.0) + e["times"]["vote"] < 20.0, e["times"]  # a transfer budget: > 30 s
    assert any(8 in e["slow"] for e in steps)


def test_a_silent_agent_in_a_two_class_fleet_costs_a_grace_not_the_gather_deadline(tmp_path: Path) -> None:
    """Worker 8 never sends a digest. Where its two co-holders are of different classes their digests disagree, so
    its file had no winner until its digest came, and every step waited the whole gather deadline (60 s here, 120 s
    by default). Now the file is voted on the two digests in (the sketch vote) after a straggler grace, then the
    silent worker gets only the short digest grace for a while."""
    result = run_cluster(tmp_path, slots=two_classes(w8="silent-digests"), max_steps=3, gather_timeout=60.0)
    steps = result.of("step")
    assert result.exit_code == 0 and len(steps) == 3
    for e in steps:
        assert e["times"]["compute"] < 30.0, e["times"]  # a relay wait at most (the silent agent may be a relay)
        assert 8 in e["erased"] and 8 in e["slow"], e
        assert e["files_won"] == PLACEMENT.f, e


def test_a_non_centre_sketch_liar_is_caught_by_the_audit_and_excluded(tmp_path: Path) -> None:
    """The issue's row 5: a holder whose sketch agreed but whose payload the PS never needed was never caught. Here
    worker 0 is the only one of its class, so every file it holds has an exact winner of the other class and its
    agreeing sketch is the step's only audit candidate: the audit fetches its payload, proves the lie, and it sits
    out the following steps."""
    slots: list[str | None] = [OTHER] + [None] * (K - 1)
    slots[0] = f"{OTHER} sketch-liar:1e-4,non-centre"
    result = run_cluster(tmp_path, slots=slots, max_steps=5, vote_tol=1e-5)
    steps = result.of("step")
    assert result.exit_code == 0 and len(steps) == 5
    convicted = [i for i, e in enumerate(steps) if e["lying"]]
    # audited every step; a step where its payload or sketch came after the step's graces (a loaded machine) it is
    # slow instead, and the next step tries again
    assert convicted and convicted[0] <= 2 and steps[convicted[0]]["lying"] == [0], steps
    assert all(e["excluded"] == [0] for e in steps[convicted[0] + 1:convicted[0] + 1 + FIRST_EXCLUSION_STEPS])
    assert all(e["files_won"] == PLACEMENT.f for e in steps)


def test_co_holders_that_drop_their_files_cannot_stop_training(tmp_path: Path) -> None:
    """The issue's row 6: two droppers in multi-krum K=9 q=3 made every update skip and the run fail. serve now
    refuses that configuration at start (three silent agents could block it: tests/test_seams_units.py), unless the
    operator accepts the risk with --short-step lower-s; then the files the droppers drop provably had a Byzantine
    majority, so s is lowered soundly (never by the unsound fallback) and every step updates."""
    droppers = worst_case(PLACEMENT, 2).worst_set
    slots: list[str | None] = [None] * K
    for w in droppers:
        slots[w] = "dropper"
    result = run_cluster(tmp_path, slots=slots, max_steps=3, byzantine=3, aggregator="multi-krum",
                         short_step="lower-s")
    steps = result.of("step")
    assert result.exit_code == 0 and len(steps) == 3
    assert any(e["files_dropped"] for e in steps)
    for e in steps:
        assert e["aggregation"]["action"] != "skip", e["aggregation"]
        if e["aggregation"]["action"] == "lower-s":
            assert e["aggregation"]["reason"].startswith("proven:"), e["aggregation"]
    # one determinism class: the files both droppers hold have two digests of one class that differ, so the digests
    # alone prove their Byzantine majority and no sketch round is held for them (it cost the MOLS q = 4 fleet 0.2 s
    # a step, a third of the clean step)
    assert all(e["sketch"]["proven_by_class"] >= 1 and e["sketch"]["split"] == 0 for e in steps), \
        [e["sketch"] for e in steps]


def test_one_fake_probe_digest_cannot_stop_an_exact_run(tmp_path: Path) -> None:
    """The issue's row 7: one agent with a fake probe digest failed a --vote exact run before step 0."""
    result = run_cluster(tmp_path, slots=[None] * (K - 1) + ["fake-probe"], max_steps=2, vote="exact")
    steps = result.of("step")
    assert result.exit_code == 0 and len(steps) == 2
    assert all(8 in e["erased"] for e in steps)


def test_a_stalling_relay_is_blamed_in_its_step_and_its_honest_child_is_not_erased(tmp_path: Path) -> None:
    """The issue's row 8: the child was counted slow and erased, the staller unblamed (its complaint arrived after
    the step's accounting). A relay hop of ~6 s against a straggler grace of ~1 s: without its protection the child
    would be erased before its relay wait ends."""
    staller = 8
    changes = {"max_steps": 2, "relay_latency": 6.0, "hedge_floor": 0.25, "hedge_factor": 1.0}
    secret = _one_child_of(zoo_config(tmp_path, **changes), staller)
    result = run_cluster(tmp_path, slots=[None] * (K - 1) + ["relay-staller"], secret=secret, **changes)
    steps = result.of("step")
    assert result.exit_code == 0 and len(steps) == 2
    first = steps[0]
    complainers = {c[0] for c in first["relay_tree"]["complaints"]}
    assert complainers and first["relay"] == [staller], first
    assert not complainers & set(first["erased"]) and not complainers & set(first["slow"]), first
    assert first["files_won"] == PLACEMENT.f


def _one_child_of(config: object, relay: int) -> bytes:
    """A secret under which ``relay`` forwards step 0's parameters to exactly one worker: every file then still has
    r' holders that are not waiting on the relay, so the gather's straggler grace, not its deadline, ends the step."""
    nodes = [RelayNode(w, ("127.0.0.1", 10_000 + w)) for w in range(K)]
    for n in range(10_000):
        secret = n.to_bytes(8, "big") * 4
        plan = plan_tree(nodes, 0, secret, roots=config.relay_roots, fanout=config.relay_fanout)  # type: ignore
        if sum(1 for source in plan.values() if source is not None and source.worker == relay) == 1:
            return secret
    raise AssertionError("no such secret")
