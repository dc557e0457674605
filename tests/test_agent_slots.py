"""Many worker slots per agent process: how slots are spread over processes, and that slots computing concurrently
in one process produce file gradients bit-identical to a one-worker process (ByzShield's vote needs equal digests).
"""
from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import wait

import numpy as np
import pytest

from shield_agent.host import ComputeHost, default_compute_threads
from shield_ps.local_agents import default_processes, split_slots
from tests.runtime_helpers import MNIST_DIR, REPO

needs_mnist = pytest.mark.skipif(not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                                 reason="local MNIST data missing")

#: (step, file) pairs every test computes; 25 files of 10 samples (MOLS K=15's f), two steps.
FILES = [(0, 0), (0, 7), (0, 24), (1, 3), (1, 7), (2, 11)]
SPEC = dict(network="LeNet", dataset="MNIST", seed=3, batch_size=250, num_files=25, threads=1)


@pytest.mark.parametrize("slots,processes,expected", [
    (15, 2, [8, 7]), (15, 1, [15]), (15, 15, [1] * 15), (35, 2, [18, 17]), (3, 8, [1, 1, 1]), (1, 1, [1]),
    (25, 4, [7, 6, 6, 6]),
])
def test_slots_are_spread_evenly_over_processes(slots: int, processes: int, expected: list[int]) -> None:
    assert split_slots(slots, processes) == expected
    assert sum(split_slots(slots, processes)) == slots


def test_default_layout_is_about_one_process_per_core() -> None:
    assert default_processes(15, cores=2) == 1
    assert default_processes(15, cores=8) == 7
    assert default_processes(15, cores=1) == 1
    assert default_processes(1, cores=16) == 1
    assert default_processes(35, cores=0) >= 1
    assert default_compute_threads(15, 1, cores=2) == 2
    assert default_compute_threads(15, 4, cores=2) == 1  # intra-op threads never oversubscribe the cores
    assert default_compute_threads(1, 1, cores=16) == 1


_ONE_WORKER = """
import json, sys
import numpy as np
from shield_model.compute import ComputeSpec, GradientComputer
from wire import digest_bytes
spec = ComputeSpec(data_dir=sys.argv[1], **json.loads(sys.argv[2]))
computer = GradientComputer(spec)
params = computer.initial_parameters()
out = {}
for step, file in json.loads(sys.argv[3]):
    grad = computer.file_gradient(params * np.float32(1 + step / 8), step, file).gradient
    out[f"{step}/{file}"] = digest_bytes(memoryview(grad).cast("B")).hex()
print(json.dumps(out))
"""


@needs_mnist
def test_concurrent_slots_match_a_one_worker_process_bit_for_bit() -> None:
    """Four slots (each its own computer) in one process, on a pool of two compute threads, all computing at once;
    the digests equal those of a separate process computing the same files one by one."""
    from shield_model.compute import ComputeSpec
    from wire import digest_bytes

    reference = json.loads(subprocess.run(
        [sys.executable, "-c", _ONE_WORKER, str(MNIST_DIR), json.dumps(SPEC), json.dumps(FILES)],
        capture_output=True, text=True, check=True, cwd=REPO, timeout=300).stdout.splitlines()[-1])

    host = ComputeHost(slots=4, pool_threads=2)
    try:
        executor = host.executor(1)
        spec = ComputeSpec(data_dir=str(MNIST_DIR), **SPEC)
        computers = [f.result() for f in [executor.submit(host.build, spec) for _ in range(4)]]
        assert len({id(c.model) for c in computers}) == 4, "slots must not share a model"
        assert len({c.data.train_images.data_ptr() for c in computers}) == 1, "slots share one dataset copy"
        params = computers[0].initial_parameters()

        def compute(slot: int, step: int, file: int) -> tuple[str, str]:
            grad = computers[slot].file_gradient(params * np.float32(1 + step / 8), step, file).gradient
            return f"{step}/{file}", digest_bytes(memoryview(grad).cast("B")).hex()

        # every slot computes every file, interleaved, so computations of different slots overlap in time
        futures = [executor.submit(compute, slot, step, file) for step, file in FILES for slot in range(4)]
        wait(futures)
        results = [f.result() for f in futures]
    finally:
        host.shutdown()
    assert host.threads == 2
    for key, digest in results:
        assert digest == reference[key], f"slot digest of {key} differs from the one-worker process"


def test_a_slot_reconnecting_to_a_gone_ps_stops_once_another_slot_heard_the_run_ended() -> None:
    """The PS's shutdown may close one slot's connection before it says the run ended: that slot sees a lost PS and
    reconnects with backoff. Once another slot of the process heard the end, it stops with that slot's exit code,
    instead of retrying a PS that is gone for ever (a hand-started agent never exited)."""
    import asyncio
    import socket

    from shield_agent.job import AgentOptions
    from shield_agent.slots import _Refusals, _run_slot, _RunOver, _SlotErrors

    with socket.socket() as probe:  # a port nothing listens on: every join is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> int:
        options = AgentOptions("127.0.0.1", port, "t" * 32, str(MNIST_DIR), max_backoff=0.5)
        over = _RunOver()
        slot = asyncio.get_running_loop().create_task(
            _run_slot(options, 0, None, None, None, _Refusals(3), _SlotErrors(), None, over))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)  # it has been refused and is backing off
        assert not slot.done()
        over.end(1)  # another slot heard "interrupted"
        return await asyncio.wait_for(slot, 30)

    assert asyncio.run(main()) == 1
