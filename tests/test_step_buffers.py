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
