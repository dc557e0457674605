"""The PS's sketch phase on its own: what it accepts from agents, what drops them, and its deadline."""
from __future__ import annotations

import asyncio

import numpy as np

from byzantine.sketch import DEFAULT_PARAMS
from shield_ps.phases.sketch import SKETCH_RATE, SketchRound
from shield_ps.pool import AgentLink

F, D = 3, 1000


def _link(worker: int) -> AgentLink:
    return AgentLink(worker, conn=None, name=f"w{worker}", files=(0, 1))  # type: ignore[arg-type]


def _answer(step: int, file: int, values: np.ndarray | None = None, norm: float | None = 2.0) -> dict:
    values = np.zeros((DEFAULT_PARAMS.rows, DEFAULT_PARAMS.width)) if values is None else values
    return {"step": step, "file": file, "sketch": values.astype("<f8").tobytes(), "norm": norm}


def test_answers_are_validated_recorded_and_complete_the_round() -> None:
    async def main() -> None:
        violations: list[tuple[int, str]] = []
        rnd = SketchRound(DEFAULT_PARAMS, F, D, 0.2, lambda w: None, lambda link, why: violations.append((link.worker,
                                                                                                            why)))
        rnd.step = 5
        rnd._expected = {0: {0, 1}, 1: {0}}
        w0, w1 = _link(0), _link(1)
        rnd.on_answer(w0, _answer(4, 0))  # an earlier step's late answer: ignored
        rnd.on_answer(w0, _answer(5, 0))
        rnd.on_answer(w0, _answer(5, 0))  # the same file again: a violation
        rnd.on_answer(w1, {**_answer(5, 0), "sketch": b"short"})  # malformed: a violation
        bad = np.zeros((DEFAULT_PARAMS.rows, DEFAULT_PARAMS.width))
        bad[3, 4] = np.nan
        rnd.on_answer(w1, _answer(5, 0, bad))  # NaN inside: a violation
        assert [w for w, _ in violations] == [0, 1, 1]
        assert "second sketch" in violations[0][1] and "sketch" in violations[1][1] and "NaN" in violations[2][1]
        rnd.on_answer(w1, {"step": 5, "file": 0, "sketch": None, "norm": None})  # non-finite gradient: recorded
        assert not rnd._done.is_set()
        rnd.on_answer(w0, _answer(5, 1))
        assert rnd._done.is_set()
        assert set(rnd.answers[0]) == {0, 1} and rnd.answers[0][1].sketch is None
        assert rnd.answers[1][0].norm == 2.0 and rnd.answers[1][0].sketch.shape == (256, 32)

    asyncio.run(main())


def test_the_round_ends_at_its_deadline_with_erasures() -> None:
    async def main() -> None:
        rnd = SketchRound(DEFAULT_PARAMS, F, D, 0.3, lambda w: _link(w), lambda link, why: None)

        async def no_send(link: AgentLink, request: object) -> None:  # the agent takes the request and never answers
            return None

        rnd._send = no_send  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        started = loop.time()
        answers = await rnd.run(7, {0: (0, 1), 2: (2,)}, compute_s=0.0)
        waited = loop.time() - started
        assert answers == [{}, {}, {}] and len(rnd.seed) == 32
        assert 0.3 <= waited < 0.3 + 2 * D / SKETCH_RATE + 2.0
        assert rnd.deadline(2, compute_s=5.0) == 0.3 + 10.0  # a slow compute phase stretches it

    asyncio.run(main())


def test_sketches_that_only_decide_blame_are_asked_for_once_the_waited_ones_are_in() -> None:
    """The split file's holders are asked first and alone; the files whose sketches only decide blame go out in a
    second SKETCH once every answer the vote waits for is in (``settled``), so on a loaded fleet they do not hold
    up the sketches the step waits for; the round returns without them, and they still count at close."""
    async def main() -> None:
        rnd = SketchRound(DEFAULT_PARAMS, F, D, 5.0, lambda w: _link(w), lambda link, why: None,
                          grace=lambda times: 10.0)  # once decidable, a grace to the deadline: settled ends it
        sent: list[tuple[int, tuple[int, ...]]] = []
        loop = asyncio.get_running_loop()

        async def send(link: AgentLink, request: object) -> None:
            files = request.files  # type: ignore[attr-defined]
            sent.append((link.worker, files))
            if files == (0,):  # the agents answer the split file at once, the blame files never
                loop.call_soon(rnd.on_answer, link, _answer(7, 0))

        rnd._send = send  # type: ignore[method-assign]
        started = loop.time()
        answers = await rnd.run(7, {0: (0,), 1: (0,)}, settled=lambda a: {0, 1} <= a[0].keys(),
                                later={0: (1,), 2: (1, 2)})
        assert loop.time() - started < 2.5  # the round's deadline is 5 s: it did not wait for the blame files
        assert sent[:2] == [(0, (0,)), (1, (0,))] and sorted(sent[2:]) == [(0, (1,)), (2, (1, 2))]
        assert set(answers[0]) == {0, 1} and answers[1] == {}
        assert rnd.close() == {0: {1}, 2: {1, 2}}

    asyncio.run(main())


def _round_silent_worker(silent: int, grace: float) -> SketchRound:
    """A round (latency 20 s, the given straggler grace) whose agents answer every file they are asked for at once,
    except ``silent``, which never answers."""
    rnd = SketchRound(DEFAULT_PARAMS, F, D, 20.0, lambda w: _link(w), lambda link, why: None,
                      grace=lambda times: grace)

    async def send(link: AgentLink, request: object) -> None:
        if link.worker != silent:
            for file in request.files:  # type: ignore[attr-defined]
                asyncio.get_running_loop().call_soon(rnd.on_answer, link,
                                                     _answer(request.step, file))  # type: ignore[attr-defined]

    rnd._send = send  # type: ignore[method-assign]
    return rnd


def test_a_worker_that_left_a_sketch_unanswered_is_not_waited_for_in_the_next_rounds() -> None:
    """Worker 2 never answers. The first round waits its grace for it (2 s here); the next UNWAITED_STEPS rounds end
    as soon as the others are in, and lingering for its blame sketches ends at once; then it is waited for again."""
    from shield_ps.phases.deadlines import UNWAITED_STEPS

    async def main() -> list[float]:
        rnd = _round_silent_worker(2, grace=2.0)
        loop = asyncio.get_running_loop()
        waited = []
        for step in (3, 4, 3 + UNWAITED_STEPS, 4 + UNWAITED_STEPS):
            started = loop.time()
            await rnd.run(step, {0: (0,), 1: (0,), 2: (0,)}, decidable=lambda a: len(a[0]) >= 2,
                          later={2: (1,)})
            await rnd.linger()
            waited.append(loop.time() - started)
            assert rnd.close() == {2: {0, 1}}
        return waited

    first, second, last_in_window, again = asyncio.run(main())
    assert first >= 2.0 and again >= 2.0  # the grace of the split round, and lingering for worker 2's blame file
    assert second < 1.5 and last_in_window < 1.5


def test_a_round_that_cannot_be_decided_without_a_worker_still_waits_for_it() -> None:
    """Not waiting for a worker that withheld lately applies only once the round is decidable: where its answer may
    decide a file (here every answer is needed), the round still gives it the grace, so a worker noted by mistake
    cannot make the step drop files."""
    async def main() -> float:
        rnd = _round_silent_worker(2, grace=1.0)
        loop = asyncio.get_running_loop()
        requests = {0: (0,), 1: (0,), 2: (0,)}
        await rnd.run(3, requests, decidable=lambda a: len(a[0]) >= 2)  # worker 2 waited for to the end: noted
        rnd.close()
        started = loop.time()
        await rnd.run(4, requests, decidable=lambda a: len(a[0]) >= 3)
        return loop.time() - started

    assert asyncio.run(main()) >= 1.0


def test_lingering_for_the_blame_sketches_is_timed_from_their_own_request() -> None:
    """The blame sketches go out once the split file is settled and are computed while the PS fetches its payloads
    (a loaded fleet's agents take longer than the grace for them). Lingering gives them the straggler grace only once
    more than half of the workers asked for them have answered, not from the first round's readiness: answers that
    come after that grace are still in, and no honest worker is noted (nor reported) for them."""
    async def main() -> dict[int, set[int]]:
        rnd = SketchRound(DEFAULT_PARAMS, F, D, 20.0, lambda w: _link(w), lambda link, why: None,
                          grace=lambda times: 0.1)
        loop = asyncio.get_running_loop()

        async def send(link: AgentLink, request: object) -> None:
            files = request.files  # type: ignore[attr-defined]
            delay = 0.0 if files == (0,) else 0.5  # the split file at once, the blame files after five graces
            for file in files:
                loop.call_later(delay, rnd.on_answer, link, _answer(7, file))

        rnd._send = send  # type: ignore[method-assign]
        await rnd.run(7, {0: (0,), 1: (0,)}, settled=lambda a: {0, 1} <= a[0].keys(),
                      decidable=lambda a: len(a[0]) >= 2, later={2: (1,), 3: (1,), 4: (1, 2)})
        await rnd.linger()
        missing = rnd.close()
        assert rnd._unwaited.at(8) == set()
        return missing

    assert asyncio.run(main()) == {}
