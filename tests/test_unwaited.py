"""One agent that withholds what only it can give (its digest of a file whose other holders disagree, or the
payload of a digest only it committed) costs a step one grace, then is not waited for past the others for
UNWAITED_STEPS steps (issue 26: no single agent costs more than 1.5x the clean median step). The gather's
deadline (120 s by default) used to be the price of a silent agent in a two-class fleet, every step."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

import wire
from byzantine.sketch import DEFAULT_PARAMS
from byzantine.vote import FileVote, VoteResult
from shield_ps.collector import StepCollector
from shield_ps.phases.buffers import StepBuffers
from shield_ps.phases.deadlines import UNWAITED_STEPS, Deadlines
from shield_ps.phases.fetch import Fetcher
from shield_ps.phases.gather import Gather
from shield_ps.phases.groups import SplitFiles
from tests.test_fetch_seams import FILE, _holders, silent
from tests.test_fetch_seams import D as WIRE_D
from tests.test_fetch_seams import _deadlines as fetch_deadlines
from wire import Kind

GATHER_DEADLINE = 20.0


def _deadlines(hedge_floor: float = 0.05) -> Deadlines:
    return Deadlines(gather=GATHER_DEADLINE, latency=1.0, min_bandwidth=1e6, hedge_factor=4.0,
                     hedge_floor=hedge_floor, relay_latency=2.0)


def _digest(step: int, file: int, name: bytes) -> dict:
    return {"step": step, "file": file, "digest": name * 32, "seconds": 0.01}


def _unprotected(worker: int, allowance: float) -> float | None:
    return None


# ---- the gather ----------------------------------------------------------------------------------------------------
def test_a_silent_holder_of_a_file_whose_other_holders_disagree_costs_a_grace_not_the_deadline() -> None:
    """Workers 0 and 1 (two determinism classes) disagree on file 0; worker 2 never sends its digest. The file can
    be voted on the two digests in (the sketch vote), so the gather ends a straggler grace later with worker 2 late,
    not at the gather deadline; for the next UNWAITED_STEPS steps worker 2 gets only the short digest grace."""
    async def main() -> None:
        gather = Gather(_deadlines())
        loop = asyncio.get_running_loop()
        for step in (0, 1):
            collector = StepCollector(step, 1, {0: (0,), 1: (0,), 2: (0,)}, r_prime=2)
            collector.add(0, _digest(step, 0, b"a"))
            collector.add(1, _digest(step, 0, b"b"))
            started = loop.time()
            late = await gather.run(step, collector, _unprotected)
            assert late == {2}
            assert loop.time() - started < GATHER_DEADLINE / 2
        assert gather.unwaited(1) == {2} and gather.unwaited(UNWAITED_STEPS) == {2}
        assert gather.unwaited(UNWAITED_STEPS + 1) == set()  # the window does not grow while it is late in it

    asyncio.run(main())


def test_a_holder_whose_digest_comes_within_the_straggler_grace_is_waited_for() -> None:
    """The wait exists for honest stragglers: a third digest that comes a little after the two that disagree gives
    the file its exact winner (the run stays a function of its seed), and nobody is late. But it held the step past
    the short digest grace: an agent that does so on purpose every step (``delayed-digests``) gets only that grace
    in the next UNWAITED_STEPS steps."""
    async def main() -> None:
        gather = Gather(_deadlines(hedge_floor=2.0))
        collector = StepCollector(0, 1, {0: (0,), 1: (0,), 2: (0,)}, r_prime=2)
        collector.add(0, _digest(0, 0, b"a"))
        collector.add(1, _digest(0, 0, b"b"))

        async def straggler() -> None:
            await asyncio.sleep(0.3)  # past the short digest grace (0.05 s here), well inside the straggler grace
            collector.add(2, _digest(0, 0, b"a"))

        task = asyncio.get_running_loop().create_task(straggler())
        late = await gather.run(0, collector, _unprotected)
        await task
        assert late == set() and collector.decided == {0: b"a" * 32}
        # it held the step past the short grace: reported slow, and given only that grace for a while
        assert gather.held == {2} and gather.unwaited(1) == {2}

    asyncio.run(main())


def test_a_worker_owing_only_decided_files_does_not_hold_the_wait_for_an_undecided_one() -> None:
    """File 0 is split (workers 0, 1 disagree; worker 2 owes it and sends it soon); file 1 has its exact winner and
    worker 3, which owes only file 1, stays silent. Once worker 2 is in, nothing can change a winner: the gather
    ends a short digest grace later, not the straggler grace (set to 8 s here) that waits for an undecided file."""
    async def main() -> None:
        gather = Gather(_deadlines(hedge_floor=8.0))
        loop = asyncio.get_running_loop()
        collector = StepCollector(0, 2, {0: (0, 1), 1: (0, 1), 2: (0,), 3: (1,)}, r_prime=2)
        for worker, name in ((0, b"a"), (1, b"b")):
            collector.add(worker, _digest(0, 0, name))
            collector.add(worker, _digest(0, 1, b"c"))

        async def straggler() -> None:
            await asyncio.sleep(0.05)
            collector.add(2, _digest(0, 0, b"c"))

        started = loop.time()
        task = loop.create_task(straggler())
        late = await gather.run(0, collector, _unprotected)
        await task
        assert late == {3} and loop.time() - started < 6.0

    asyncio.run(main())


def test_once_only_workers_not_waited_for_are_missing_the_gather_ends_at_the_grace_floor() -> None:
    """Worker 2 was late lately (not waited for); worker 3 is not. Every file has its exact winner, and the typical
    digest time is 40 s here, so the short digest grace is 20 s. While worker 3 is missing, the gather waits that
    grace for it; once it is in and only worker 2 is missing, it ends at the floor (0.05 s): a silent or slow agent
    used to cost every step half the typical digest time (1.54x the clean step on MOLS K=15, issue 26)."""
    async def main() -> None:
        gather = Gather(_deadlines())
        gather._unwaited.note(2, 0)  # late at step 0 (a real late step would need the 20 s grace to be waited out)
        loop = asyncio.get_running_loop()
        for late_worker_3 in (False, True):
            step = 2 if late_worker_3 else 1
            collector = StepCollector(step, 2, {0: (0, 1), 1: (0, 1), 2: (0,), 3: (1,)}, r_prime=2)
            collector._started -= 40.0  # the step began 40 s ago: every digest took 40 s
            for worker in (0, 1):
                collector.add(worker, _digest(step, 0, b"a"))
                collector.add(worker, _digest(step, 1, b"c"))
            if not late_worker_3:
                collector.add(3, _digest(step, 1, b"c"))
            assert collector.all_decided.is_set()

            async def worker_3(collector: StepCollector = collector, step: int = step) -> None:
                await asyncio.sleep(0.3)
                collector.add(3, _digest(step, 1, b"c"))

            started = loop.time()
            task = loop.create_task(worker_3()) if late_worker_3 else None
            late = await gather.run(step, collector, _unprotected)
            if task is not None:
                await task
            assert late == {2} and loop.time() - started < GATHER_DEADLINE / 4, (step, loop.time() - started)

    asyncio.run(main())


# ---- the split files -----------------------------------------------------------------------------------------------
def _echoing(payload: np.ndarray) -> Callable:
    """A holder that answers every FETCH with ``payload`` for the step it was asked about."""
    def answer(conn: wire.Connection, msg: wire.Message):
        return conn.send_vector(Kind.VECTOR, {"step": msg.header["step"], "file": FILE}, payload, codec="none",
                                reply_to=msg)
    return answer


def test_a_lone_holder_that_withheld_its_payload_is_not_waited_for_in_the_next_steps() -> None:
    """Worker 2 alone committed its digest of a split file and never answers FETCH. The first step waits a hedge
    delay for it past the r' payloads of workers 0 and 1; the next UNWAITED_STEPS steps end at quorum without it
    (``unwaited``), and it is ``slow`` every time; then it is waited for again."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal(WIRE_D).astype(np.float32)
    payloads = [base, (base * np.float32(1 + 1e-7)).astype(np.float32)]
    digests = [wire.vector_digest(p) for p in payloads] + [b"z" * 32]
    group = (0, 1, 2)
    vote = VoteResult((FileVote(FILE, 0, group, (), ()),), 2)
    replies = [dict(zip(group, digests, strict=True))]

    async def main() -> list[tuple[int, int, set[int], float]]:
        buffers = StepBuffers(1, WIRE_D)
        seen = []
        async with _holders([_echoing(payloads[0]), _echoing(payloads[1]), silent]) as links:
            fetcher = Fetcher(buffers, fetch_deadlines(), b"s" * 32, links.get, lambda link, why: None)
            splits = SplitFiles(fetcher, buffers, fetch_deadlines(), 2, DEFAULT_PARAMS)
            for step in (10, 11, 10 + UNWAITED_STEPS, 11 + UNWAITED_STEPS):
                buffers.begin_step()
                fetcher.begin(step)
                started = time.monotonic()
                try:
                    outcome = await asyncio.wait_for(splits.resolve(step, [FILE], vote, replies, [{}], b"seed", 0.1),
                                                     30)
                finally:
                    await fetcher.cancel()
                    splits.end_step()
                assert outcome.won == {FILE}, outcome
                seen.append((step, outcome.unwaited, outcome.slow, time.monotonic() - started))
        return seen

    seen = asyncio.run(main())
    assert [(step, unwaited, slow) for step, unwaited, slow, _ in seen] == [
        (10, 0, {2}), (11, 1, {2}), (10 + UNWAITED_STEPS, 1, {2}), (11 + UNWAITED_STEPS, 0, {2})]


def test_a_protected_worker_that_did_not_complain_and_came_late_held_the_step() -> None:
    """Worker 2 is protected for its relay wait (30 s here), so the gather waits for it past the grace. If it never
    complained of its relay it had its parameters, and the wait was only for its own delay (``delayed-digests``
    on a relayed worker held every step up to its relay wait): it is ``held`` and, for the next UNWAITED_STEPS
    steps, not protected at all. A worker that complained (an honest child of a stalling relay) is not."""
    async def main(complained: bool) -> tuple[set[int], set[int], set[int]]:
        gather = Gather(_deadlines())
        collector = StepCollector(0, 1, {0: (0,), 1: (0,), 2: (0,)}, r_prime=2)
        collector.add(0, _digest(0, 0, b"a"))
        collector.add(1, _digest(0, 0, b"a"))  # the file has its winner: a short grace, stretched by the protection
        protected = time.monotonic() + 30.0

        async def delayed() -> None:
            await asyncio.sleep(0.5)  # past the short grace (0.05 s here), inside the protection
            collector.add(2, _digest(0, 0, b"a"))

        task = asyncio.get_running_loop().create_task(delayed())
        late = await gather.run(0, collector, lambda w, allowance: protected if w == 2 else None,
                                lambda w: complained and w == 2)
        await task
        held, cooled_next = late | gather.held, gather.unwaited(1)
        if complained:
            return held, cooled_next, set()
        # the next step: is it still protected?
        collector = StepCollector(1, 1, {0: (0,), 1: (0,), 2: (0,)}, r_prime=2)
        collector.add(0, _digest(1, 0, b"a"))
        collector.add(1, _digest(1, 0, b"a"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        next_late = await asyncio.wait_for(
            gather.run(1, collector, lambda w, allowance: time.monotonic() + 30.0 if w == 2 else None), 60)
        assert loop.time() - started < GATHER_DEADLINE / 2  # its protection (30 s) no longer holds the step
        return held, cooled_next, next_late

    held, unwaited, next_late = asyncio.run(main(complained=False))
    assert held == {2} and unwaited == {2} and next_late == {2}  # no protection in its window: late at the grace
    held, unwaited, _ = asyncio.run(main(complained=True))
    assert held == set() and unwaited == set()
