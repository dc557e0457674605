"""The Byzantine seams of issue 26, piece by piece: group medians, exclusions, the audit's choice, provable drops and
the sound lowering of s, the refusal of configurations q withholders can block, relay blame and relay protection."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzantine.errors import AggregationError
from byzantine.groups import OUTLIER_FACTOR, could_bias, median_into, outliers, relative_distances
from byzantine.vote import FileVote, vote_digests
from shield_ps.config import ServeConfig
from shield_ps.job import resolve_job
from shield_ps.phases.aggregate import Aggregation, ShortStep
from shield_ps.phases.audit import Candidate, candidates, pick
from shield_ps.phases.buffers import StepBuffers
from shield_ps.phases.deadlines import Deadlines
from shield_ps.phases.exclusion import FIRST_EXCLUSION_STEPS, MAX_EXCLUSION_STEPS, Exclusions
from shield_ps.phases.relay import Source
from shield_ps.phases.relay_round import RelayRound
from shield_ps.phases.vote import provable_drops
from shield_ps.pool import AgentLink

RNG = np.random.default_rng(7)


# ---- the median of a split file's group ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), d=st.integers(1, 300), seed=st.integers(0, 2**31 - 1),
       weights=st.lists(st.integers(1, 3), min_size=5, max_size=5))
def test_median_matches_numpy_with_multiplicity_and_ignores_order(n: int, d: int, seed: int,
                                                                  weights: list[int]) -> None:
    rng = np.random.default_rng(seed)
    rows = [rng.standard_normal(d).astype(np.float32) for _ in range(n)]
    w = weights[:n]
    out = median_into(rows, w, np.empty(d, np.float32))
    expanded = np.stack([r for r, k in zip(rows, w, strict=False) for _ in range(k)])
    assert np.allclose(out, np.median(expanded, axis=0).astype(np.float32), rtol=1e-6, atol=1e-7)
    order = rng.permutation(n)
    again = median_into([rows[i] for i in order], [w[i] for i in order], np.empty(d, np.float32))
    assert np.array_equal(out, again)


def test_a_byzantine_minority_cannot_move_the_median_outside_the_honest_range() -> None:
    d = 5000
    honest = [RNG.standard_normal(d).astype(np.float32) for _ in range(2)]
    for byzantine in (np.full(d, 1e6, np.float32), -honest[0] * 1e3, honest[0] + 0.04 * np.linalg.norm(honest[0])):
        out = median_into(honest + [np.asarray(byzantine, np.float32)], [1, 1, 1], np.empty(d, np.float32))
        low, high = np.minimum(*honest), np.maximum(*honest)
        assert np.all((out >= low) & (out <= high))
    assert could_bias([1, 1], [False, True]) and not could_bias([1, 1, 1], [False, False, True])
    assert could_bias([1, 2], [True, False]) is False and could_bias([2, 1], [True, False])


def test_outliers_are_what_lies_beyond_the_hiding_bound() -> None:
    d, tol, hiding = 20_000, 1e-4, 2.61
    g = RNG.standard_normal(d).astype(np.float32)

    def at(rel: float) -> np.ndarray:
        v = RNG.standard_normal(d)
        return (g + rel * np.linalg.norm(g) * v / np.linalg.norm(v)).astype(np.float32)

    a, b = at(0.5 * tol), at(0.5 * tol)  # two honest classes, tol apart at most
    far = at(10 * hiding * tol)
    center = median_into([a, b, far], [1, 1, 1], np.empty(d, np.float32))
    assert outliers([a, b, far], center, tol, hiding) == [2]
    near = at(1.0 * tol)
    center = median_into([a, b, near], [1, 1, 1], np.empty(d, np.float32))
    assert outliers([a, b, near], center, tol, hiding) == []
    assert relative_distances([center], center) == [0.0]
    assert OUTLIER_FACTOR * hiding > 1 + hiding  # an honest member stays inside (module docstring)


# ---- exclusions ---------------------------------------------------------------------------------------------------
def test_a_proven_liar_sits_out_a_doubling_number_of_steps() -> None:
    book = Exclusions()
    book.convict(10, [4])
    book.convict(10, [4])  # several proofs in one step are one conviction
    assert 4 not in book.excluded(10) and 4 in book.excluded(11)
    assert 4 in book.excluded(10 + FIRST_EXCLUSION_STEPS) and 4 not in book.excluded(11 + FIRST_EXCLUSION_STEPS)
    book.convict(30, [4])
    assert 4 in book.excluded(30 + 2 * FIRST_EXCLUSION_STEPS)
    assert 4 not in book.excluded(31 + 2 * FIRST_EXCLUSION_STEPS)
    for step in range(100, 140):
        book.convict(step, [4])
    assert max(book.until.values()) <= 139 + 1 + MAX_EXCLUSION_STEPS


# ---- the audit ----------------------------------------------------------------------------------------------------
def test_audit_candidates_are_the_excusable_losers_and_the_pick_is_keyed() -> None:
    win, other = b"w" * 32, b"o" * 32
    replies = [{0: win, 1: win, 2: other}, {1: win, 2: win, 3: win}, {2: other}]
    assert candidates({0: {2}, 1: set()}, replies) == [Candidate(0, 2, other)]
    assert candidates({}, replies) == []
    many = [Candidate(f, w, b"x") for f in range(5) for w in range(3)]
    picks = {pick(many, b"k" * 32, i.to_bytes(32, "big")) for i in range(40)}
    assert len(picks) > 5 and pick([], b"k", b"s") is None  # a different candidate from step to step


# ---- provable drops and the sound lowering of s --------------------------------------------------------------------
def test_a_drop_proves_a_byzantine_majority_only_when_every_holder_replied() -> None:
    holders = [(0, 1, 2), (1, 2, 3), (2, 3, 4)]
    replies = [{0: b"a", 1: b"b", 2: b"c"}, {1: b"a", 2: b"b"}, {2: b"a", 3: b"a", 4: b"b"}]
    vote = vote_digests(holders, replies, 2)
    assert provable_drops(vote, replies, 3) == {0}  # file 1 lost a holder (maybe honest and slow); file 2 won
    assert provable_drops(vote, replies, 3, invalid={b"c"}) == set()  # a non-finite value may be honest


def _plan(**changes: object):
    base = dict(scheme="mols", workers=15, replication=3, aggregator="multi-krum", byzantine=3, max_steps=1,
                synthetic_d=8)
    return resolve_job(ServeConfig(**{**base, **changes}))


def test_proven_drops_lower_s_soundly_instead_of_skipping() -> None:
    plan = _plan()
    s = plan.aggregator_kwargs["s"]
    buffers = StepBuffers(plan.placement.f, 8)
    buffers.rows[:] = RNG.standard_normal((plan.placement.f, 8)).astype(np.float32)
    aggregation = Aggregation(plan, buffers, ShortStep.SKIP)
    n = 2 * s + 2  # one row short of multi-krum's n >= 2s + 3
    won = list(range(n))
    skipped = aggregation.run(0, won, (), proven=0)
    assert skipped.action == "skip" and skipped.gradient is None
    lowered = aggregation.run(0, won, (), proven=1)
    assert lowered.action == "lower-s" and lowered.s == s - 1 and "proven" in lowered.reason
    assert lowered.gradient is not None


def test_serve_refuses_a_configuration_q_withholders_can_block() -> None:
    with pytest.raises(AggregationError, match=r"withhold the c=5 files.*leaving 20 of f=25.*bulyan"):
        _plan(aggregator="bulyan", byzantine=4)
    _plan(aggregator="bulyan", byzantine=4, attack="alie")  # a simulated attack never withholds: a warning only
    _plan(aggregator="bulyan", byzantine=4, short_step="lower-s")  # the risk accepted explicitly
    _plan(aggregator="bulyan", byzantine=3)


def test_fixed_byzantine_workers_without_a_simulated_attack_are_named_for_accounting() -> None:
    plan = _plan(aggregator="coord-median", byzantine_gen="fixed", fixed_byzantine=(1, 4, 9))
    assert plan.attack is None and plan.byzantine is not None and set(plan.byzantine.at(3)) == {1, 4, 9}


# ---- relay blame and protection ------------------------------------------------------------------------------------
def _deadlines() -> Deadlines:
    return Deadlines(gather=60.0, latency=1.0, min_bandwidth=1e6, hedge_factor=4.0, hedge_floor=0.25,
                     relay_latency=2.0)


def _relay_round() -> RelayRound:
    relays = RelayRound(_deadlines(), b"s" * 32, enabled=True, roots=1, fanout=2, nbytes=4000)
    relays.step = 5
    relays.sources = {0: None, 1: Source(0, ("h", 1), 2), 2: Source(1, ("h", 2), 3)}
    relays._started = time.monotonic()
    return relays


def _link(worker: int) -> AgentLink:
    return AgentLink(worker, conn=None, name=f"w{worker}", files=(0,))  # type: ignore[arg-type]


def test_one_complaint_per_worker_and_step_and_a_late_one_counts_for_its_step() -> None:
    relays = _relay_round()
    sent: list[int] = []
    for _ in range(5):  # an accuser repeating itself in one step is one complaint
        relays.on_complaint(_link(1), {"step": 5, "reason": "stalled"}, lambda link, step: sent.append(link.worker),
                            lambda: None)
    assert sent == [1] and relays.blame() == {0}
    assert relays.book.strikes == {0: 1, 1: 1}
    relays.plan(6, [])  # the next step begins (relay off for it: no links)
    relays.sources = {}
    relays._previous = (5, [], set(), {2: Source(1, ("h", 2), 3)})
    relays.on_complaint(_link(2), {"step": 5, "reason": "corrupt"}, lambda link, step: sent.append(9), lambda: None)
    assert sent == [1] and 1 in relays.book.no_relay(6)  # blamed on step 5's account, no vector for a past step
    relays.on_complaint(_link(2), {"step": 3, "reason": "corrupt"}, lambda link, step: None, lambda: None)
    relays.on_complaint(_link(2), {"step": True, "reason": "corrupt"}, lambda link, step: None, lambda: None)
    assert relays.book.strikes.get(2, 0) == 1


def test_a_relayed_worker_is_protected_until_its_relay_wait_ends_then_a_grace_after_complaining() -> None:
    relays = _relay_round()
    hop = _deadlines().relay_hop(4000)
    assert relays.protected_until(0, 1.0) is None
    until = relays.protected_until(2, 1.0)
    assert until is not None and until >= relays._started + 3 * hop
    relays.on_complaint(_link(2), {"step": 5, "reason": "stalled"}, lambda link, step: None, lambda: None)
    after = relays.protected_until(2, 1.0)  # the direct send (one hop), then its compute (the allowance)
    assert after is not None and time.monotonic() + hop <= after <= time.monotonic() + hop + 1.0


def test_the_gather_waits_out_a_protected_worker_and_wakes_on_a_complaint() -> None:
    from shield_ps.collector import StepCollector
    from shield_ps.phases.gather import Gather

    async def main() -> None:
        deadlines = _deadlines()
        deadlines.hedge_floor = 0.05
        collector = StepCollector(0, 1, {0: (0,), 1: (0,), 2: (0,)}, r_prime=2)
        gather = Gather(deadlines)
        protected = {2: time.monotonic() + 0.6}
        header = {"step": 0, "file": 0, "digest": b"d" * 32, "seconds": 0.01}
        collector.add(0, header)
        collector.add(1, header)  # every file decided: only a straggler grace is left for worker 2 ...
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def late_digest() -> None:
            await asyncio.sleep(0.4)  # ... but it is protected: its digest, past the grace, still counts
            collector.add(2, header)

        task = loop.create_task(late_digest())
        late = await gather.run(0, collector, lambda w, grace: protected.get(w))
        await task
        assert late == set() and 0.35 <= loop.time() - started < 5.0
        # unprotected, the same straggler is late after the grace
        collector = StepCollector(0, 1, {0: (0,), 1: (0,), 2: (0,)}, r_prime=2)
        collector.add(0, header)
        collector.add(1, header)
        assert await gather.run(0, collector, lambda w, grace: None) == {2}

    asyncio.run(main())


def test_a_protected_worker_that_has_delivered_no_longer_holds_the_step() -> None:
    """Worker 2 is protected for 30 s (its relay wait) but sends its digest at once; worker 3 stays silent. The
    gather ends a grace after the files are decided, not at worker 2's protection: that held every step of a fleet
    with one silent agent for a whole relay wait (4.7 s against 0.2 s)."""
    from shield_ps.collector import StepCollector
    from shield_ps.phases.gather import Gather

    async def main() -> None:
        deadlines = _deadlines()
        deadlines.hedge_floor, deadlines.gather = 0.05, 60.0
        collector = StepCollector(0, 1, {0: (0,), 1: (0,), 2: (0,), 3: (0,)}, r_prime=2)
        gather = Gather(deadlines)
        protected = {2: time.monotonic() + 30.0}
        header = {"step": 0, "file": 0, "digest": b"d" * 32, "seconds": 0.01}
        collector.add(0, header)
        collector.add(1, header)
        loop = asyncio.get_running_loop()

        async def delivered() -> None:
            await asyncio.sleep(0.05)
            collector.add(2, header)

        started = loop.time()
        task = loop.create_task(delivered())
        late = await gather.run(0, collector, lambda w, grace: protected.get(w))
        await task
        assert late == {3} and loop.time() - started < 15.0

    asyncio.run(main())


def test_the_straggler_grace_follows_the_fastest_recent_step_not_a_slowed_one() -> None:
    """After fast steps, a step whose median digest time one agent inflated (a stalled relay's children) gives
    its stragglers the recent fast steps' grace, a share of the typical time (not hedge_factor times it)."""
    from shield_ps.phases.gather import Gather

    deadlines = _deadlines()
    deadlines.hedge_floor = 0.05
    gather = Gather(deadlines)

    def grace(finish_times: list[float]) -> float:
        return deadlines.digest_grace(gather._typical_now(finish_times))

    assert grace([0.2, 0.2, 0.2]) == pytest.approx(0.1)  # STRAGGLER_SHARE of 0.2
    assert grace([5.0, 5.0, 0.2]) == pytest.approx(0.1)  # a slowed step: the recent fast typical
    assert grace([]) == pytest.approx(0.1)


# ---- blame of files with an exact winner ---------------------------------------------------------------------------
def test_a_silent_loser_of_another_class_is_neither_absolved_nor_outvoted_but_slow() -> None:
    from byzantine.sketch import SketchReply, l2_norm, sketch
    from shield_ps.phases.auto_vote import blame, unanswered

    seed = b"s" * 32
    g = RNG.standard_normal(4000).astype(np.float32)
    near = (g * np.float32(1 + 1e-7)).astype(np.float32)
    far = (g + 0.5 * np.linalg.norm(g) * RNG.standard_normal(4000) / 63.0).astype(np.float32)

    def reply(x: np.ndarray) -> SketchReply:
        return SketchReply(sketch(x, seed), l2_norm(x))

    exact = FileVote(0, b"w" * 32, (0, 1), (2, 3, 4), ())  # 2, 3 of another class; 4 of the winners' class
    answers = {0: reply(g), 2: reply(near), 4: reply(far)}
    voted = blame(exact, answers, {2, 3}, 1e-5)
    assert voted.holders == (0, 1, 2)  # 2's sketch agrees with a winner's: a replica of another class
    assert voted.disagreeing == (4,)  # 4 has no excuse; 3 sent nothing: neither absolved nor outvoted ...
    assert unanswered(exact, {2, 3}, answers) == {3}  # ... but slow
    assert unanswered(exact, {2, 3}, {2: reply(near)}) == {0, 1}  # no winner sketched: the winners were slow
    far_answers = {0: reply(g), 2: reply(far), 3: reply(near)}
    assert blame(exact, far_answers, {2, 3}, 1e-5).disagreeing == (2, 4)


def test_a_relayed_worker_that_wastes_its_protection_loses_it_for_a_while() -> None:
    from shield_ps.phases.relay import COOLDOWN_STEPS

    relays = _relay_round()
    assert relays.protected_until(2, 1.0) is not None
    relays.end_step({2})  # late to the end, never complained: it was not waiting on its relay
    for step in range(6, 6 + COOLDOWN_STEPS):
        relays.plan(step, [])
        relays.sources = {2: Source(1, ("h", 2), 3)}
        assert relays.protected_until(2, 1.0) is None
    relays.plan(6 + COOLDOWN_STEPS, [])
    relays.sources = {2: Source(1, ("h", 2), 3)}
    assert relays.protected_until(2, 1.0) is not None
    relays.on_complaint(_link(2), {"step": relays.step, "reason": "stalled"}, lambda link, step: None, lambda: None)
    relays.end_step({2})  # late even after its complaint bought it a direct send and a compute: no longer excused
    relays.plan(7 + COOLDOWN_STEPS, [])
    relays.sources = {2: Source(1, ("h", 2), 3)}
    assert relays.protected_until(2, 1.0) is None  # a complaint then silence cannot hold every step
