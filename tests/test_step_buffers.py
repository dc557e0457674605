"""The step's buffers (issue 21): one owner for the (f, d) rows and the spare vectors the phases borrow."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shield_ps.phases.buffers import SPARES_OVER_F, StepBuffers

F, D = 5, 16

#: One step's use of spares: ("borrow", _), ("give", i) or ("quarantine", i): give back or quarantine the i-th
#: vector still lent (modulo how many are lent).
OPS = st.lists(st.tuples(st.sampled_from(["borrow", "give", "quarantine"]), st.integers(0, 40)), max_size=60)


def _run_step(buffers: StepBuffers, ops: list[tuple[str, int]]) -> set[int]:
    """Apply ``ops`` as one step; assert no vector is lent twice at once or lent again while quarantined; return
    the ids of the vectors handed out. Every vector still lent at the end is quarantined (a step's end)."""
    lent: list[np.ndarray] = []
    quarantined: set[int] = set()
    seen = set()
    for op, index in ops:
        if op == "borrow":
            vector = buffers.borrow()
            assert vector.shape == (D,) and vector.dtype == np.float32
            assert all(vector is not other for other in lent), "a vector lent twice at once"
            assert id(vector) not in quarantined, "a quarantined vector lent in the same step"
            assert not np.shares_memory(vector, buffers.rows)
            lent.append(vector)
            seen.add(id(vector))
        elif lent:
            vector = lent.pop(index % len(lent))
            if op == "give":
                buffers.give_back(vector)
            else:
                buffers.quarantine(vector)
                quarantined.add(id(vector))
    for vector in lent:
        buffers.quarantine(vector)
    assert buffers.lent == 0
    return seen


@settings(max_examples=60, deadline=None)
@given(st.lists(OPS, min_size=1, max_size=6))
def test_a_vector_is_never_lent_twice_and_quarantine_holds_until_the_next_step(
        steps: list[list[tuple[str, int]]]) -> None:
    buffers = StepBuffers(F, D)
    for ops in steps:
        buffers.begin_step()
        assert buffers.spares <= buffers.keep
        _run_step(buffers, ops)


@settings(max_examples=30, deadline=None)
@given(OPS)
def test_the_same_steps_over_and_over_allocate_nothing_after_the_first(ops: list[tuple[str, int]]) -> None:
    """A step whose pattern repeats borrows only vectors it already had: no growth across steps (``keep`` covers
    the step's needs, so every vector stays alive and ids are not reused)."""
    buffers = StepBuffers(F, D, keep=64)
    buffers.begin_step()
    first = _run_step(buffers, ops)
    for _ in range(5):
        buffers.begin_step()
        assert _run_step(buffers, ops) <= first, "a later step allocated a new vector"


def test_what_a_step_of_many_hedges_took_is_let_go_at_the_next_step() -> None:
    buffers = StepBuffers(F, D)
    many = [buffers.borrow() for _ in range(3 * (F + SPARES_OVER_F))]
    for vector in many:
        buffers.quarantine(vector)
    assert buffers.spares == 0
    buffers.begin_step()
    assert buffers.spares == F + SPARES_OVER_F == buffers.keep


def test_giving_back_twice_or_what_was_not_lent_is_refused() -> None:
    buffers = StepBuffers(F, D)
    vector = buffers.borrow()
    buffers.give_back(vector)
    with pytest.raises(ValueError, match="not lent"):
        buffers.give_back(vector)
    with pytest.raises(ValueError, match="not lent"):
        buffers.quarantine(np.empty(D, np.float32))
    with pytest.raises(ValueError, match="not lent"):
        buffers.give_back(buffers.row(0))


def test_rows_are_views_and_compact_moves_the_won_rows_to_the_front() -> None:
    buffers = StepBuffers(F, D)
    buffers.rows[:] = np.arange(F, dtype=np.float32)[:, None]
    row = buffers.row(3)
    assert np.shares_memory(row, buffers.rows)  # the fetch writes a payload straight into its row
    buffers.put(1, np.full(D, 7, np.float32))
    assert (buffers.rows[1] == 7).all()
    front = buffers.compact([1, 3, 4])
    assert front.shape == (3, D) and np.shares_memory(front, buffers.rows)
    np.testing.assert_array_equal(front[:, 0], [7, 3, 4])
    np.testing.assert_array_equal(buffers.compact([0, 1, 2])[:, 0], [7, 3, 4])  # in place: nothing moves


def test_the_digest_intake_starts_a_winners_fetch_itself_and_only_while_its_step_is_open() -> None:
    """The gather's intake is wired to the fetcher at construction: the second equal digest of file 0 (r' = 2)
    starts its fetch at once, from the intake, with the holders that committed it, asked in the fetcher's order;
    without a fetcher to stream to (``--vote tolerant``) nothing starts; once closed, digests are ignored."""
    import asyncio

    from shield_ps.events import WorkerState
    from shield_ps.phases.deadlines import Deadlines
    from shield_ps.phases.fetch import Fetcher
    from shield_ps.phases.gather import DigestIntake
    from shield_ps.pool import AgentLink, WorkerPool

    header = {"step": 0, "file": 0, "digest": b"d" * 32, "seconds": 0.01}

    async def main(streaming: bool) -> tuple[list[list[int]], list[str], list[WorkerState]]:
        asked: list[int] = []
        fetches: list[list[int]] = []
        deadlines = Deadlines(gather=60.0, latency=10.0, min_bandwidth=10e6, hedge_factor=4.0, hedge_floor=0.25)
        fetcher = Fetcher(StepBuffers(1, D), deadlines, b"s" * 32, lambda worker: asked.append(worker),  # type: ignore[arg-type,func-returns-value]
                          lambda link, why: None)
        fetcher.begin(0)
        links = [AgentLink(w, conn=None, name=f"w{w}", files=(0,)) for w in range(3)]  # type: ignore[arg-type]
        violations: list[str] = []
        pool = WorkerPool(((0,), (0,), (0,)), lambda *args, **kw: None)
        intake = DigestIntake(1, 2, pool, lambda link, why: violations.append(why),
                              stream_to=fetcher if streaming else None)
        intake.open(0, links)
        for worker in range(3):
            intake.on_digest(links[worker], header)
            await asyncio.sleep(0)  # a started fetch runs its first ask now (no holder is connected: it ends)
            fetches.append(sorted(set(asked)))
        intake.close()
        intake.on_digest(links[0], {**header, "file": 7})  # the step is closed: not even checked
        await fetcher.finish()
        return fetches, violations, [link.state for link in links]

    fetches, violations, states = asyncio.run(main(streaming=True))
    assert fetches == [[], [0, 1], [0, 1]], fetches  # started at the second digest, its two committed holders
    assert not violations and states == [WorkerState.DONE] * 3
    fetches, _, _ = asyncio.run(main(streaming=False))
    assert fetches == [[], [], []]


def test_a_split_files_payload_fetched_in_an_earlier_round_keeps_its_buffer() -> None:
    """A split file voted again (a liar left its group) may name a payload fetched in an earlier round of the same
    step: the fetcher does not fetch it twice, so the split files must combine the buffer it was fetched into. Every
    free spare is poisoned with NaN between the rounds: a payload read from any other buffer shows."""
    import asyncio

    import wire
    from byzantine.sketch import DEFAULT_PARAMS
    from byzantine.vote import FileVote, VoteResult
    from shield_ps.phases.fetch import Fetcher
    from shield_ps.phases.groups import SplitFiles
    from tests.test_fetch_seams import FILE, STEP, _deadlines, _holders, _payload, honest
    from tests.test_fetch_seams import D as WIRE_D

    payload = _payload(11)
    digest = wire.vector_digest(payload)
    group = (0, 1, 2)
    vote = VoteResult((FileVote(FILE, 0, group, (), ()),), 2)
    replies = [{w: digest for w in group}]

    async def main() -> list[np.ndarray]:
        buffers = StepBuffers(1, WIRE_D)
        rows = []
        async with _holders([honest(payload)] * 3) as links:
            fetcher = Fetcher(buffers, _deadlines(), b"s" * 32, links.get, lambda link, why: None)
            splits = SplitFiles(fetcher, buffers, _deadlines(), 2, DEFAULT_PARAMS)
            buffers.begin_step()
            fetcher.begin(STEP)
            try:
                for _ in range(2):
                    outcome = await asyncio.wait_for(
                        splits.resolve(STEP, [FILE], vote, replies, [{}], b"seed", 0.1), 30)
                    assert outcome.won == {FILE}, outcome
                    rows.append(buffers.row(FILE).copy())
                    buffers.row(FILE)[:] = 0
                    spares = [buffers.borrow() for _ in range(buffers.spares)]
                    for vector in spares:
                        vector[:] = np.nan
                        buffers.give_back(vector)
            finally:
                await fetcher.cancel()
                splits.end_step()
        return rows

    first, second = asyncio.run(main())
    assert first.tobytes() == payload.tobytes()
    assert second.tobytes() == payload.tobytes(), "the second round combined a buffer the payload never reached"
