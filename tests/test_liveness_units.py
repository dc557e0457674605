"""Pieces of the liveness work that are pure or in-process: centered clipping from the previous aggregate, the
pre-authentication limits of the wire server, the secret fetch order, deadlines, superseded events, tallies."""
from __future__ import annotations

import asyncio
import socket

import numpy as np
import pytest

import wire
from byzantine.aggregators import aggregate
from shield_ps.events import effective_events
from shield_ps.phases.accounting import StepAccount, Tally
from shield_ps.phases.buffers import SPARES_OVER_F, StepBuffers
from shield_ps.phases.deadlines import Deadlines
from shield_ps.phases.fetch import holder_order
from wire import Kind

TOKEN = "unit-test-token-0123456789abcdef"


# ---- centered clipping (Karimireddy, He and Jaggi, ICML 2021) ----------------------------------------------------
def _alie_rows(n: int = 15, byzantine: int = 3, d: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(d).astype(np.float32)
    honest = truth + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    attacked = honest.copy()
    mu, sigma = honest.mean(axis=0), honest.std(axis=0)
    attacked[:byzantine] = mu - 1.0 * sigma  # ALIE, z = 1
    return attacked, truth


def test_centered_clipping_from_the_previous_aggregate_differs_from_the_mean_under_alie() -> None:
    X, truth = _alie_rows()
    previous = truth + np.float32(0.01)  # last step's aggregate: close to the honest mean
    clipped = aggregate("centered-clipping", X, tau=1.0, iters=1, center=previous)
    mean = aggregate("mean", X)
    assert np.abs(clipped - mean).max() > 1e-3
    assert np.linalg.norm(clipped - truth) < np.linalg.norm(mean - truth)


def test_centered_clipping_bounds_what_byzantine_rows_can_move() -> None:
    """One iteration moves the centre by the mean of clipped differences, each of norm <= tau: b rows, however
    large, move the result by at most 2 * b / n * tau."""
    X, truth = _alie_rows()
    tau, n, b = 0.5, X.shape[0], 3
    honest = aggregate("centered-clipping", X, tau=tau, iters=1, center=truth)
    wild = X.copy()
    wild[:b] = 1e6 * np.random.default_rng(1).standard_normal((b, X.shape[1])).astype(np.float32)
    moved = aggregate("centered-clipping", wild, tau=tau, iters=1, center=truth)
    assert np.linalg.norm(moved - honest) <= 2 * b / n * tau * (1 + 1e-5)
    assert np.linalg.norm(moved - truth) <= tau * (1 + 1e-5)


def test_the_ps_clips_around_the_previous_aggregate() -> None:
    from shield_ps.config import ServeConfig
    from shield_ps.job import resolve_job
    from shield_ps.phases.aggregate import Aggregation, ShortStep

    plan = resolve_job(ServeConfig(scheme="mols", workers=15, replication=3, max_steps=2,
                                   aggregator="centered-clipping", cc_tau=0.5))
    X, truth = _alie_rows(n=plan.placement.f)
    buffers = StepBuffers(*X.shape)
    rows = buffers.rows
    step = Aggregation(plan, buffers, ShortStep.SKIP)
    np.copyto(rows, X)
    first = step.run(0, list(range(plan.placement.f)), ()).gradient
    assert first is not None and np.linalg.norm(first) <= 0.5 * (1 + 1e-5)  # from 0, one clipped move
    step.commit()
    np.copyto(rows, X)
    second = step.run(1, list(range(plan.placement.f)), ()).gradient
    expected = aggregate("centered-clipping", X, tau=0.5, iters=1, center=first)
    assert second is not None and np.array_equal(second, expected)


# ---- wire: pre-authentication limits -----------------------------------------------------------------------------
async def _idle_sockets(port: int, count: int, source: str) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        socks.append(sock)
    return socks


class _JumpingClockLoop(asyncio.SelectorEventLoop):  # type: ignore[misc,valid-type]
    """An event loop whose clock the test moves forward at once (``jump``), so that a deadline passes exactly when
    the test says, whatever the machine's load: before the jump no deadline of ``HANDSHAKE_S`` can pass (the test
    takes far less real time than that), after it every one has."""

    offset = 0.0

    def time(self) -> float:
        return super().time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


HANDSHAKE_S = 120.0


def test_preauth_connections_are_capped_small_and_given_back() -> None:
    """Ten silent sockets from 127.0.0.2: four are held before authentication (the per-host cap), six refused at
    once; an agent from another host still gets in; then the handshake deadline passes (the clock jumps past it)
    and the four silent ones are cut, counted and given back. Every wait is on an event (a refusal, the agent's
    arrival, the handshake tasks ending), never on a poll against a short real deadline (which lost the race under
    a loaded machine: the 1 s handshake deadline used to pass before the caps were checked)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, _JumpingClockLoop)
        authenticated = asyncio.Event()

        async def owner(conn: wire.Connection) -> None:
            authenticated.set()
            await conn.recv()

        limits = wire.Limits(max_preauth=6, max_preauth_per_host=4)
        server = await wire.serve("127.0.0.1", 0, owner, token=TOKEN, limits=limits,
                                  timeouts=wire.Timeouts(handshake=HANDSHAKE_S))
        refusals: asyncio.Queue[str] = asyncio.Queue()
        count_refusal = server._refuse

        def refuse(reason: str, host: str) -> None:
            count_refusal(reason, host)
            refusals.put_nowait(reason)

        server._refuse = refuse  # type: ignore[method-assign]
        socks: list[socket.socket] = []
        try:
            socks = await _idle_sockets(server.port, 10, "127.0.0.2")
            assert [await asyncio.wait_for(refusals.get(), 60) for _ in range(6)] == ["preauth"] * 6
            assert server.preauth_count == 4 and server.refused["preauth"] == 6  # the per-host cap
            assert all(len(c.reader._buf) <= 16 * 1024 for c in server.connections)
            silent = set(server._tasks)  # the four handshakes held open
            assert len(silent) == 4
            agent = await wire.connect("127.0.0.1", server.port, token=TOKEN)  # another host still gets in
            await asyncio.wait_for(authenticated.wait(), 60)
            assert agent.peer is not None and server.refused_total == 6
            loop.jump(HANDSHAKE_S + 1)  # the silent ones' handshake deadline passes now
            assert [await asyncio.wait_for(refusals.get(), 60) for _ in range(4)] == ["timeout"] * 4
            await asyncio.wait_for(asyncio.gather(*silent), 60)  # cut and given back
            assert server.preauth_count == 0 and server.refused["timeout"] == 4
            assert len(server.connections) == 1 and server.refused_total == 10
            await agent.close()
        finally:
            for sock in socks:
                sock.close()
            await server.close()

    with asyncio.Runner(loop_factory=_JumpingClockLoop) as runner:
        runner.run(main())


# ---- fetch order, deadlines, events, tallies ---------------------------------------------------------------------
def test_fetch_order_depends_on_the_secret_and_covers_every_holder() -> None:
    holders = (3, 7, 11)
    orders = {tuple(holder_order(bytes([n]) * 32, 5, 2, holders)) for n in range(40)}
    assert all(sorted(order) == list(holders) for order in orders)
    assert len({order[0] for order in orders}) == 3  # no holder can count on being asked first, or never
    assert holder_order(b"s" * 32, 5, 2, holders) == holder_order(b"s" * 32, 5, 2, holders)


def test_deadlines_scale_with_size_and_hedge_from_the_median() -> None:
    d = Deadlines(gather=60, latency=2.0, min_bandwidth=10e6, hedge_factor=4.0, hedge_floor=0.5)
    assert d.transfer(0) == 2.0 and d.transfer(45_000_000) == pytest.approx(2.0 + 90.0)  # unmeasured: 0.5 MB/s
    assert d.hedge_delay(45_000_000) == 0.5  # nothing measured yet: the floor
    d.seed(0.5, 45_000_000)  # the links are fast: min_bandwidth from now on
    for seconds in (0.2, 0.3, 0.25):
        d.record_fetch(seconds)
    assert d.transfer(45_000_000) == pytest.approx(6.5) and d.relay_hop(45_000_000) == pytest.approx(6.5)
    assert d.hedge_delay(45_000_000) == pytest.approx(1.0)  # 4 x the median
    for _ in range(5):
        d.record_fetch(100.0)
    assert d.hedge_delay(45_000_000) == d.transfer(45_000_000)  # never past the transfer budget
    assert d.worst_fetch(45_000_000, 3) == 3 * d.transfer(45_000_000)


def test_transfer_budgets_follow_links_slower_than_min_bandwidth_down_to_a_twentieth_of_it() -> None:
    """A fetch of a 45 MB vector that shares a 1 Gbit/s PS ingress with 24 others runs at ~5 MB/s, below the
    default --min-bandwidth of 10 MB/s: the budget follows (at half the median rate), so honest fetches are not cut
    (the fleet bed cut them at 14.5 s); a lossy WAN's 0.5-1.6 MB/s flows are given 0.5 MB/s, the slowest
    allowance."""
    nbytes = 45_000_000
    d = Deadlines(gather=60, latency=10.0, min_bandwidth=10e6, hedge_factor=4.0, hedge_floor=0.25)
    d.seed(0.7, nbytes)  # a root's STEP took 0.7 s: sends and relay hops are paced at min_bandwidth
    assert d.relay_hop(nbytes) == pytest.approx(2.0 + 4.5)
    assert d.transfer(nbytes) == pytest.approx(10.0 + 90.0)  # no real fetch yet: the slowest allowance
    for _ in range(25):
        d.record_fetch(9.0)  # 5 MB/s each
    assert d.transfer(nbytes) == pytest.approx(10.0 + 18.0)
    assert d.relay_hop(nbytes) == pytest.approx(6.5)  # sends are still fast
    for _ in range(128):
        d.record_fetch(45.0)  # 1 MB/s: 1% loss and 80 ms RTT
    assert d.transfer(nbytes) == pytest.approx(10.0 + 90.0)
    for _ in range(128):
        d.record_fetch(300.0)
    assert d.transfer(nbytes) == pytest.approx(10.0 + 90.0)  # never slower than min_bandwidth / 20
    for _ in range(128):
        d.record_fetch(0.1)
    assert d.transfer(nbytes) == pytest.approx(14.5)  # never faster than min_bandwidth


def test_a_resumed_job_supersedes_the_steps_it_runs_again() -> None:
    events = [{"kind": "job", "resumed": False, "start_step": 0}] + [{"kind": "step", "step": s} for s in range(5)]
    events += [{"kind": "eval", "step": 2}, {"kind": "eval", "step": 4}, {"kind": "checkpoint", "step": 4}]
    events += [{"kind": "job", "resumed": True, "start_step": 2}] + [{"kind": "step", "step": s} for s in (2, 3)]
    kept = effective_events(events)
    assert [e["step"] for e in kept if e["kind"] == "step"] == [0, 1, 2, 3]
    assert [e["step"] for e in kept if e["kind"] == "eval"] == [2]  # the state at the checkpoint resumed from
    assert not [e for e in kept if e["kind"] == "checkpoint"]


def test_tally_round_trips_and_never_counts_a_liar_as_outvoted() -> None:
    tally = Tally()
    account = StepAccount.build(lying={2}, outvoted={2, 5}, slow={7}, erased={7, 9})
    assert account.lying == [2] and account.outvoted == [5]
    tally.add(account, files_corrupted=1, files_dropped=2, action="skip")
    again = Tally.from_json(tally.to_json())
    assert again == tally and again.summary_fields()["slow_workers"] == {"7": 1}
    assert again.totals["steps_skipped"] == 1 and Tally.from_json(None) == Tally()


def test_garbage_before_authentication_is_counted_as_protocol_and_leaves_no_nonce() -> None:
    async def main() -> None:
        async def owner(conn: wire.Connection) -> None:
            await conn.recv()

        server = await wire.serve("127.0.0.1", 0, owner, token=TOKEN, timeouts=wire.Timeouts(handshake=0.5))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n" * 4)  # no frame at all
            await writer.drain()
            with_hello = await asyncio.open_connection("127.0.0.1", server.port)
            with_hello[1].write(wire.encode_frame(Kind.HELLO, {"version": wire.PROTOCOL_VERSION, "role": "agent",
                                                             "name": "x", "nonce": b"n" * 32}))
            for _ in range(200):  # the half handshake times out; the garbage is refused at once
                if server.refused["protocol"] == 1 and server.refused["timeout"] == 1:
                    break
                await asyncio.sleep(0.02)
            assert server.refused["protocol"] == 1 and server.refused["auth"] == 0
            assert server.refused["timeout"] == 1 and len(server._nonces._open) == 0
            writer.close()
            with_hello[1].close()
        finally:
            await server.close()

    asyncio.run(main())


def test_first_step_hedges_from_the_broadcast_then_from_real_fetches() -> None:
    deadlines = Deadlines(gather=60.0, latency=10.0, min_bandwidth=10e6, hedge_factor=4.0, hedge_floor=0.25)
    nbytes = 45_000_000
    assert deadlines.hedge_delay(nbytes) == 0.25  # nothing known yet: the floor
    deadlines.seed(0.5)  # a STEP send of the same vector took 0.5 s
    deadlines.seed(0.7)
    assert deadlines.hedge_delay(nbytes) == pytest.approx(4 * 0.6)
    deadlines.record_fetch(0.1)  # the first real fetch replaces the seeds
    assert deadlines.hedge_delay(nbytes) == pytest.approx(0.4)
    deadlines.seed(5.0)  # later broadcasts never move it
    assert deadlines.hedge_delay(nbytes) == pytest.approx(0.4)


def test_spare_buffers_kept_across_steps_are_bounded_by_the_files() -> None:
    from shield_ps.phases.fetch import Fetcher

    async def main() -> int:
        buffers = StepBuffers(5, 8)
        deadlines = Deadlines(gather=60.0, latency=10.0, min_bandwidth=10e6, hedge_factor=4.0, hedge_floor=0.25)
        Fetcher(buffers, deadlines, b"s" * 32, lambda worker: None, lambda link, why: None)
        for vector in [buffers.borrow() for _ in range(40)]:  # a step that hedged every file
            buffers.quarantine(vector)
        buffers.begin_step()
        return buffers.spares

    assert asyncio.run(main()) == 5 + SPARES_OVER_F


def test_a_holder_whose_payload_keeps_pace_is_not_hedged() -> None:
    from shield_ps.phases.fetch import Fetcher, _Attempt

    def attempt(received: int, receiving: bool = True) -> _Attempt:
        a = _Attempt(worker=0)
        a.receiving, a.received, a.receiving_since = receiving, received, 0.0
        return a

    deadlines = Deadlines(gather=60.0, latency=10.0, min_bandwidth=10e6, hedge_factor=4.0, hedge_floor=0.25)
    fetcher = Fetcher(StepBuffers(3, 8), deadlines, b"s" * 32, lambda worker: None, lambda link, why: None)
    shared = [attempt(40 << 20), attempt(44 << 20), attempt(36 << 20)]  # the step's payloads, sharing the ingress
    fetcher._receiving.update(shared)
    assert fetcher._keeping_pace([shared[1]])  # as fast as the others: the PS's ingress is the limit
    trickle = attempt(1 << 20)
    fetcher._receiving.add(trickle)
    assert not fetcher._keeping_pace([trickle])  # far slower than the rest: hedged
    assert not fetcher._keeping_pace([attempt(0, receiving=False)])  # has not started its payload
    fetcher._receiving = {attempt(0), attempt(0)}
    assert not fetcher._keeping_pace([attempt(0)])  # no chunk in anywhere yet: no evidence, hedge as usual
