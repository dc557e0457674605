"""Relay broadcast: the tree (pure), the agents' relay hub over real TCP, and whole runs with relays that corrupt or
stall (shield_ps.phases.relay, shield_agent.relay)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from shield_agent.adversary import Adversary, parse_adversaries
from shield_agent.relay import RelayError, RelayHub, RelaySource
from shield_ps.phases.relay import COOLDOWN_STEPS, RelayBook, RelayNode, blame, plan_tree
from tests.byzantine_zoo import RunResult, run_cluster, secret_making_relay, secret_relaying_to, zoo_config
from tests.runtime_helpers import MNIST_DIR
from wire import AuthError, Kind, connect, digest_bytes
from wire.auth import Role

TOKEN = "relay-test-token-0123456789abcdef"
SECRET = bytes(range(32))


def _nodes(k: int, per_process: int = 1, serving: bool = True) -> list[RelayNode]:
    return [RelayNode(w, ("10.0.0.1", 9000 + w // per_process) if serving else None) for w in range(k)]


def _check_tree(plan: dict, nodes: list[RelayNode], no_relay: frozenset[int] = frozenset()) -> None:
    """Every worker has a source or is direct; every chain ends at the PS in ``depth`` hops without a cycle; a source
    is a serving process; nobody in ``no_relay`` forwards to another process."""
    address = {n.worker: n.serves for n in nodes}
    assert set(plan) == set(address)
    for worker, source in plan.items():
        hops, current, seen = 1, source, {worker}
        while current is not None:
            assert current.worker not in seen
            assert address[current.worker] is not None
            assert current.address == address[current.worker][:2]
            # across processes: only relays that may relay
            if address[worker] is None or current.address != address[worker][:2]:
                assert current.worker not in no_relay
            seen.add(current.worker)
            hops += 1
            current = plan[current.worker]
        assert hops == (source.depth if source is not None else 1)


@pytest.mark.parametrize("k,roots,fanout", [(1, 2, 2), (9, 2, 2), (15, 2, 2), (35, 2, 2), (35, 3, 4), (35, 1, 1)])
def test_tree_covers_everyone_from_roots_only(k: int, roots: int, fanout: int) -> None:
    nodes = _nodes(k)
    for step in range(5):
        plan = plan_tree(nodes, step, SECRET, roots=roots, fanout=fanout)
        _check_tree(plan, nodes)
        assert sum(source is None for source in plan.values()) == min(k, roots)  # PS egress: `roots` vectors
        children: dict[int, int] = {}
        for source in plan.values():
            if source is not None:
                children[source.worker] = children.get(source.worker, 0) + 1
        assert max(children.values(), default=0) <= fanout


def test_tree_is_keyed_and_reshuffled_every_step() -> None:
    nodes = _nodes(15)
    plans = [plan_tree(nodes, step, SECRET, roots=2, fanout=2) for step in range(6)]
    assert plans[0] == plan_tree(nodes, 0, SECRET, roots=2, fanout=2)
    assert len({tuple(sorted((w, s.worker if s else -1) for w, s in p.items())) for p in plans}) > 3
    assert plan_tree(nodes, 0, bytes(32), roots=2, fanout=2) != plans[0]


def test_slots_of_one_process_share_one_copy() -> None:
    nodes = _nodes(12, per_process=4)  # three processes of four slots
    plan = plan_tree(nodes, 0, SECRET, roots=2, fanout=2)
    _check_tree(plan, nodes)
    for base in (0, 4, 8):
        for sibling in range(base + 1, base + 4):
            assert plan[sibling] is not None and plan[sibling].worker == base
    assert sum(source is None for source in plan.values()) == 2


def test_a_slot_naming_another_process_port_without_its_id_is_a_process_of_its_own() -> None:
    honest, other = b"h" * 16, b"x" * 16
    nodes = [RelayNode(0, ("10.0.0.1", 9000, other))] + [RelayNode(w, ("10.0.0.1", 9000, honest)) for w in (1, 2, 3)]
    nodes += [RelayNode(w, ("10.0.0.2", 9000 + w, bytes([w]) * 16)) for w in range(4, 9)]
    for step in range(4):
        plan = plan_tree(nodes, step, SECRET, roots=2, fanout=2)
        for sibling in (2, 3):  # the honest process's slots take the vector from its own first slot, never from 0
            assert plan[sibling] is not None and plan[sibling].worker == 1


def test_relay_address_needs_a_port_and_the_process_id() -> None:
    from shield_ps.daemon import relay_address

    assert relay_address("10.0.0.7:51234", 7001, b"i" * 16) == ("10.0.0.7", 7001, b"i" * 16)
    assert relay_address("::1:51234", 7001, b"i" * 16) == ("::1", 7001, b"i" * 16)
    for port, process in [(0, b"i" * 16), (70000, b"i" * 16), (True, b"i" * 16), ("7001", b"i" * 16), (7001, None),
                          (7001, b"short"), (7001, "i" * 16)]:
        assert relay_address("10.0.0.7:51234", port, process) is None
    assert relay_address(None, 7001, b"i" * 16) is None


def test_demoted_and_silent_processes_only_receive() -> None:
    nodes = _nodes(15)[:12] + [RelayNode(w, None) for w in (12, 13, 14)]  # three agents serve no relay
    no_relay = frozenset({0, 1, 2, 3})
    for step in range(5):
        plan = plan_tree(nodes, step, SECRET, roots=2, fanout=2, no_relay=no_relay, direct=frozenset({5}))
        _check_tree(plan, nodes, no_relay)
        assert plan[5] is None
        parents = {s.worker for s in plan.values() if s is not None}
        assert not parents & (no_relay | {12, 13, 14})


def test_without_relays_everyone_is_direct() -> None:
    plan = plan_tree(_nodes(9, serving=False), 0, SECRET, roots=2, fanout=2)
    assert all(source is None for source in plan.values())


def test_complaints_demote_the_accused_and_put_the_accuser_on_direct_sends() -> None:
    book = RelayBook()
    book.complain(3, accuser=1, accused=7)
    assert book.no_relay(4) == {7} and book.direct(4) == {1}
    assert book.no_relay(3 + COOLDOWN_STEPS + 1) == frozenset()
    book.complain(20, accuser=2, accused=7)  # a second strike doubles the cooldown
    assert 7 in book.no_relay(20 + 2 * COOLDOWN_STEPS) and 7 not in book.no_relay(21 + 2 * COOLDOWN_STEPS)


def test_a_relay_cut_off_by_its_own_source_is_excused() -> None:
    complaints = [[3, 8, "corrupt"], [6, 8, "corrupt"], [5, 3, "corrupt"], [0, 6, "stalled"], [7, 2, "stalled"]]
    assert blame(complaints) == [(3, 8), (6, 8), (7, 2)]
    assert blame([]) == []


@pytest.mark.parametrize("relay", [None, "x", {"worker": 1, "host": "h", "port": 0, "wait": 1.0},
                                   {"worker": 1, "host": "h", "port": 9, "wait": 1e9},
                                   {"worker": True, "host": "h", "port": 9, "wait": 1.0},
                                   {"worker": 1, "host": "", "port": 9, "wait": 1.0}])
def test_malformed_relay_instructions_are_refused(relay: object) -> None:
    with pytest.raises(RelayError):
        RelaySource.from_field(relay)


# ---- the agents' relay hub over real TCP ------------------------------------------------------------------------
async def _hubs(lie: str | None = None) -> tuple[RelayHub, RelayHub]:
    """A relay server (Byzantine with ``--adversary lie``) and a client hub."""
    server = RelayHub(TOKEN, adversary=Adversary(parse_adversaries([lie] if lie else [])))
    client = RelayHub(TOKEN)
    await server.start()
    return server, client


async def _relay_once(lie: str | None, wait: float = 5.0, publish: bool = True) -> tuple[str | None, np.ndarray]:
    server, client = await _hubs(lie)
    server.store.joined(3)  # a slot of the relay's process is connected to the PS
    vector = np.arange(100_000, dtype=np.float32)
    digest = digest_bytes(memoryview(vector).cast("B"))
    dest = np.zeros_like(vector)
    try:
        if publish:
            server.store.finish(server.store.begin(4, digest, vector), ok=True)
        source = RelaySource(worker=3, host="127.0.0.1", port=server.port, wait=wait)
        reason = await asyncio.wait_for(client.receive(source, 4, digest, dest), wait + 10)
    finally:
        await client.close()
        await server.close()
    return reason, dest


def test_hub_relays_a_verified_vector() -> None:
    reason, dest = asyncio.run(_relay_once(None))
    assert reason is None and np.array_equal(dest, np.arange(100_000, dtype=np.float32))


@pytest.mark.parametrize("lie,expected", [("relay-corrupter", "corrupt"), ("relay-staller", "stalled")])
def test_hub_reports_a_byzantine_relay(lie: str, expected: str) -> None:
    reason, _ = asyncio.run(_relay_once(lie, wait=1.0))
    assert reason == expected


async def _cut_through(fail: bool) -> tuple[str | None, np.ndarray, int]:
    """The relay offers a vector while it still arrives (half of it in place); the asker gets the first chunks before
    the rest lands, then everything (or, when the relay's own receive fails, a cut frame)."""
    server, client = await _hubs()
    vector = np.arange(3 << 20, dtype=np.float32)  # three 4 MiB chunks
    digest = digest_bytes(memoryview(vector).cast("B"))
    incoming = np.zeros_like(vector)
    dest = np.zeros_like(vector)
    entry = server.store.begin(7, digest, incoming)
    incoming[: 1 << 20] = vector[: 1 << 20]
    server.store.progress(entry, 4 << 20)
    seen_early = 0
    try:
        source = RelaySource(worker=3, host="127.0.0.1", port=server.port, wait=20.0)
        task = asyncio.get_running_loop().create_task(client.receive(source, 7, digest, dest))
        for _ in range(200):  # the first chunk reaches the asker before the relay has the rest
            await asyncio.sleep(0.02)
            if dest[(1 << 20) - 1] == vector[(1 << 20) - 1]:
                seen_early = 1
                break
        if fail:
            server.store.finish(entry, ok=False)
        else:
            incoming[:] = vector
            server.store.progress(entry, vector.nbytes)
            server.store.finish(entry, ok=True)
        reason = await asyncio.wait_for(task, 30)
    finally:
        await client.close()
        await server.close()
    return reason, dest, seen_early


def test_hub_forwards_chunks_as_they_arrive() -> None:
    reason, dest, seen_early = asyncio.run(_cut_through(fail=False))
    assert seen_early and reason is None
    assert np.array_equal(dest, np.arange(3 << 20, dtype=np.float32))


def test_hub_cuts_the_frame_when_its_own_receive_fails() -> None:
    reason, _, seen_early = asyncio.run(_cut_through(fail=True))
    assert seen_early and reason == "corrupt"


def test_hub_waits_for_a_vector_not_yet_there_then_refuses() -> None:
    """The relay answers at 0.9 of the asker's wait: 2 s leaves 0.2 s for the answer (0.5 s left 50 ms, and on a
    loaded machine the asker gave up first about one run in five)."""
    reason, _ = asyncio.run(_relay_once(None, wait=2.0, publish=False))
    assert reason == "refused"


def test_a_relay_with_no_slot_connected_to_the_ps_says_so_at_once() -> None:
    """Its slots lost the PS (or crashed): nobody in that process will receive the step, so the asker is told at
    once instead of at the end of its wait."""
    async def main() -> tuple[str | None, float]:
        server, client = await _hubs()
        server.store.joined(5)
        started = asyncio.get_running_loop().time()
        try:
            source = RelaySource(worker=5, host="127.0.0.1", port=server.port, wait=20.0)
            task = asyncio.get_running_loop().create_task(client.receive(source, 3, b"d" * 32, np.zeros(4, np.float32)))
            await asyncio.sleep(0.3)
            server.store.left(5)  # the slot's session ended
            return await asyncio.wait_for(task, 30), asyncio.get_running_loop().time() - started
        finally:
            await client.close()
            await server.close()

    reason, seconds = asyncio.run(main())
    assert reason == "refused" and seconds < 10


def test_hub_reports_an_unreachable_relay() -> None:
    async def main() -> str | None:
        client = RelayHub(TOKEN)
        vector = np.zeros(10, np.float32)
        try:
            return await client.receive(RelaySource(3, "127.0.0.1", 1, 2.0), 0, b"\0" * 32, vector)
        finally:
            await client.close()

    assert asyncio.run(main()) == "unreachable"


def test_relay_server_takes_relay_connections_only() -> None:
    async def main() -> None:
        server = RelayHub(TOKEN)
        await server.start()
        try:
            with pytest.raises(AuthError):
                await connect("127.0.0.1", server.port, token=TOKEN, role=Role.AGENT)
            conn = await connect("127.0.0.1", server.port, token=TOKEN, role=Role.RELAY)
            reply = await conn.request(Kind.RELAY, {"step": "x"}, timeout=5)
            await conn.close()
        except Exception as exc:  # RemoteError is what a malformed request gets
            assert type(exc).__name__ == "RemoteError", exc
        else:
            raise AssertionError(f"a malformed relay request was answered with {reply}")
        finally:
            await server.close()

    asyncio.run(main())


def test_a_slow_reader_never_holds_up_the_owner_of_the_buffer() -> None:
    """An agent asks for a vector with the longest wait and then stops reading: when the owner needs the buffer for
    the step after next, it withdraws the vector and cuts that send instead of waiting out the asker's wait."""
    async def main() -> tuple[float, bool, bool]:
        server = RelayHub(TOKEN)
        await server.start()
        server.store.joined(1)
        buffer = np.ones(8 << 20, np.float32)  # 32 MiB: far more than the socket buffers hold
        digest = digest_bytes(memoryview(buffer).cast("B"))
        server.store.finish(server.store.begin(0, digest, buffer), ok=True)
        conn = await connect("127.0.0.1", server.port, token=TOKEN, role=Role.RELAY)
        try:
            reply = await conn.request(Kind.RELAY, {"step": 0, "digest": digest, "wait": 900.0}, timeout=10)
            assert reply.kind is Kind.VECTOR  # ... and never read: the send stalls on a full socket
            await asyncio.sleep(0.5)
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(server.store.reclaim(buffer), 30)
            seconds = asyncio.get_running_loop().time() - started
            await asyncio.sleep(0.2)
            withdrawn = await server.store.get(0, digest, 0.05) is None
            return seconds, withdrawn, not server._server.connections
        finally:
            await conn.close()
            await server.close()

    seconds, withdrawn, cut = asyncio.run(main())
    assert seconds < 5 and withdrawn and cut


# ---- whole runs ---------------------------------------------------------------------------------------------------
needs_mnist = pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(), reason="local MNIST missing")
CULPRIT = 8
STEPS = 3


def _secret() -> bytes:
    return secret_making_relay(zoo_config(Path("unused")), CULPRIT)


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    return run_cluster(tmp_path_factory.mktemp("direct"), slots=[None] * 9, secret=_secret(), relay="off",
                       max_steps=STEPS)


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("zoo", [None, "relay-corrupter", "relay-staller"])
def test_relayed_runs_match_direct_broadcast(tmp_path: Path, direct: RunResult, zoo: str | None) -> None:
    result = run_cluster(tmp_path, zoo=zoo, secret=_secret(), relay="on", max_steps=STEPS)
    steps = result.of("step")
    assert result.exit_code == 0 and [e["step"] for e in steps] == list(range(STEPS))
    assert np.array_equal(result.params, direct.params)  # bit-identical to the direct broadcast
    d4 = 431_080 * 4
    for relayed, plain in zip(steps, direct.of("step"), strict=False):
        assert plain["bytes_out"] > 8 * d4 and not plain["relay_tree"]
        tree = relayed["relay_tree"]
        assert tree["direct"] + tree["relayed"] == 9 + len(tree["complaints"])
        assert relayed["bytes_out"] <= (tree["direct"] + 0.2) * d4
        assert relayed["lying"] == [] and relayed["outvoted"] == [] and relayed["erased"] == []
        assert relayed["files_won"] == 9
    if zoo is None:
        assert all(e["relay"] == [] and e["relay_tree"]["complaints"] == [] for e in steps)
        assert all(e["relay_tree"]["direct"] == 2 for e in steps)
        assert all(e["bytes_out"] <= 2.2 * d4 for e in steps)
        return
    first = steps[0]
    assert first["relay"] == [CULPRIT], first
    complaints = first["relay_tree"]["complaints"]
    accusers = {accuser for accuser, _, _ in complaints}
    # relays forward chunks before their own digest check: the culprit's children cut theirs off and complain too
    assert {accused for _, accused, _ in complaints} - accusers == {CULPRIT}
    reason = {"relay-corrupter": "corrupt", "relay-staller": "stalled"}[zoo]
    assert {why for _, _, why in first["relay_tree"]["complaints"]} == {reason}
    assert all(e["relay"] == [] for e in steps[1:])  # demoted: it forwards to nobody in the following steps
    assert result.of("summary")[-1]["relay_workers"] == {str(CULPRIT): 1}
    config = zoo_config(Path("unused"))
    hop = config.relay_latency + d4 / (config.min_bandwidth * 1e6)
    assert first["times"]["total"] < 4 * hop + 60  # a stalled relay costs its children a bounded wait


@needs_mnist
@pytest.mark.slow
@pytest.mark.parametrize("zoo", [None, "trickle", "relay-corrupter"])
def test_serial_direct_steps_match_streaming_relayed_steps(tmp_path: Path, zoo: str | None) -> None:
    """The step before this issue (every digest in, then vote, then fetch; the PS sends every agent the vector) and
    the step now (streaming vote, relay broadcast) end with the same parameters, bit for bit, also with a Byzantine
    agent in either phase."""
    serial = run_cluster(tmp_path / "serial", zoo=zoo, secret=_secret(), relay="off", streaming_vote=False,
                         max_steps=STEPS)
    streaming = run_cluster(tmp_path / "streaming", zoo=zoo, secret=_secret(), relay="on", max_steps=STEPS)
    assert serial.exit_code == streaming.exit_code == 0
    assert all(e["files_won"] == 9 for run in (serial, streaming) for e in run.of("step"))
    assert np.array_equal(serial.params, streaming.params)
    assert all(not e["relay_tree"] for e in serial.of("step"))
    assert all(e["relay_tree"]["relayed"] >= 4 for e in streaming.of("step"))  # at most 3 are sent it directly


@needs_mnist
@pytest.mark.slow
def test_repeated_complaints_of_one_accuser_in_one_step_count_once(tmp_path: Path) -> None:
    """Worker 8 (``--adversary relay-accuser:5``) sends five false RELAY complaints at once against the honest relay
    the PS named for it at step 0. One complaint counts: the relay is benched for COOLDOWN_STEPS as for one strike
    (five strikes would bench it 8 << 4 = 128 steps), and the accuser, put on direct sends, computes every step."""
    secret, relay = secret_relaying_to(zoo_config(Path("unused")), CULPRIT)
    result = run_cluster(tmp_path, zoo="relay-accuser:5", secret=secret, relay="on", max_steps=STEPS)
    steps = result.of("step")
    assert result.exit_code == 0 and [e["step"] for e in steps] == list(range(STEPS))
    complaints = steps[0]["relay_tree"]["complaints"]
    assert [c for c in complaints if c[0] == CULPRIT] == [[CULPRIT, relay, "stalled"]], complaints
    book = result.daemon.runner.relay_book
    assert book.strikes.get(relay) == 1, book
    assert book.demoted_until[relay] <= 1 + COOLDOWN_STEPS, book
    assert all(e["files_won"] == 9 and CULPRIT not in e["erased"] for e in steps)


def test_a_process_that_reaches_no_relay_stops_waiting_for_relays_until_one_answers() -> None:
    from shield_agent.relay import MAX_UNREACHABLE_S, UNREACHABLE_S, Reachability

    reach = Reachability()
    a, b = ("10.0.0.2", 7000), ("10.0.0.3", 7000)
    assert reach.worth_trying(a, 0.0) and reach.worth_trying(b, 0.0)
    reach.failed(a, 0.0)  # one relay's SYNs were lost: every relay is presumed unreachable (behind NAT)
    assert not reach.worth_trying(a, 1.0) and not reach.worth_trying(b, 1.0)
    assert reach.worth_trying(b, UNREACHABLE_S) and not reach.worth_trying(a, UNREACHABLE_S - 0.1)
    reach.failed(a, UNREACHABLE_S)  # failed again: its presumption doubles
    assert not reach.worth_trying(a, 3 * UNREACHABLE_S - 0.1) and reach.worth_trying(a, 3 * UNREACHABLE_S)
    for _ in range(20):
        reach.failed(a, 0.0)
    assert reach.until[a] == MAX_UNREACHABLE_S
    reach.reached(b)  # a connection got through: nothing is presumed any more
    assert reach.worth_trying(b, 0.0) and reach.worth_trying(a, 1e9) and not reach.failed_in_a_row


def test_workers_with_a_slow_uplink_relay_to_nobody() -> None:
    from shield_ps.phases.relay import slow_uplinks

    rates = {0: 100e6, 1: 90e6, 2: 110e6, 3: 5e6, 4: 0.0}  # 3 sends at 1/20 of the others, 4 never started
    assert slow_uplinks(rates) == {3, 4}
    assert slow_uplinks({0: 1.0, 1: 0.0}) == frozenset()  # too few to say what is typical
    nodes = _nodes(12)
    for step in range(20):
        plan = plan_tree(nodes, step, _secret(), roots=2, fanout=2, no_relay=slow_uplinks(rates))
        parents = {source.worker for source in plan.values() if source is not None}
        assert not parents & {3, 4}
        _check_tree(plan, nodes, no_relay=frozenset({3, 4}))
