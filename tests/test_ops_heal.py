"""Self-healing agents, offline: an agent instance dies mid-run (moto terminates it and its node's processes die),
``shield-ops up --watch`` launches a replacement that joins the live PS in the vacated slot, and the run completes
with the replacement computing. ``status`` keeps the lost instance in the node's history."""
from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops_beds import BASELINE_ARGS, open_bed, start_watch
from tests.test_ops_autostop import events, wheel  # noqa: F401  (wheel is a fixture)
from tests.test_ops_e2e import RUNTIME, shield_ops
from tests.test_ops_fakes import boto_client, moto_env  # noqa: F401  (moto_env is a fixture)

pytestmark = pytest.mark.skipif(not RUNTIME, reason="`shield-ps serve --help` fails: no runtime to heal")

NAME = "e2e-heal"
STEPS = 80


#: The heal and spot-notice clusters' PS: ``STEPS`` steps of large batches, so a replacement fits in a run.
PS_ARGS = (*BASELINE_ARGS, "--batch-size", "1000", "--max-steps", str(STEPS), "--eval-freq", str(STEPS), "--seed", "5")


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, moto_env: str, wheel: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    with open_bed(tmp_path_factory.mktemp("heal"), moto_env, wheel, NAME, PS_ARGS) as opened:
        yield opened


def last_step(metrics: Path) -> int:
    steps = [e["step"] for e in events(metrics) if e["kind"] == "step"] if metrics.exists() else []
    return steps[-1] if steps else -1


def wait_running(bed: dict[str, Any], name: str, out: io.StringIO, deadline: float) -> tuple[dict[str, str], Path]:
    """Wait until the watch has the cluster's three instances up and the PS has run 3 steps; node -> instance id of
    them and the PS's metrics.jsonl."""
    first: dict[str, str] = {}
    while time.monotonic() < deadline and len(first) < 3:
        first = instances_by_node(bed["moto"], name)
        time.sleep(0.5)
    assert len(first) == 3, out.getvalue()[-3000:]
    while time.monotonic() < deadline and first["ps"] not in bed["cloud"].nodes:  # created at its first SSH dial
        time.sleep(0.5)
    metrics = bed["cloud"].nodes[first["ps"]].home / "shield/run/metrics.jsonl"
    while time.monotonic() < deadline and last_step(metrics) < 3:
        time.sleep(0.2)
    assert last_step(metrics) >= 3, out.getvalue()[-3000:]
    return first, metrics


def test_a_lost_agent_is_replaced_by_the_watch_and_rejoins_the_live_ps(bed: dict[str, Any]) -> None:
    """The PS is paused (SIGSTOP) from the first erasure until the replacement has started: it stands in for a run
    long enough to outlast a replacement on any machine, and keeps this test short."""
    thread, out, result = start_watch(bed)
    deadline = time.monotonic() + 240
    first, metrics = wait_running(bed, NAME, out, deadline)
    home = bed["cloud"].nodes[first["ps"]].home
    lost = first["agent-1"]
    boto_client(bed["moto"]).terminate_instances(InstanceIds=[lost])  # a spot interruption, as EC2 does it
    bed["cloud"].kill(lost)
    while time.monotonic() < deadline and not any(e.get("erased") for e in events(metrics) if e["kind"] == "step"):
        time.sleep(0.2)
    pid = int((home / "shield/ps.pid").read_text())
    os.killpg(pid, signal.SIGSTOP)
    try:
        # until the replacement has started and dialled the PS (the kernel completes a TCP handshake for a stopped
        # listener, so a second established client connection to the PS port is the heir knocking)
        while time.monotonic() < deadline and not (replacement_started(out.getvalue(), lost)
                                                   and clients_of(bed["port"]) >= 2):
            time.sleep(0.2)
        assert replacement_started(out.getvalue(), lost), out.getvalue()[-3000:]
        assert clients_of(bed["port"]) >= 2
    finally:
        os.killpg(pid, signal.SIGCONT)
    thread.join(timeout=300)
    assert not thread.is_alive(), out.getvalue()[-3000:]
    assert result.get("code") == 0, out.getvalue()[-3000:]
    run = events(metrics)
    summary = [e for e in run if e["kind"] == "summary"]
    assert summary and summary[-1]["reason"] == "completed" and summary[-1]["steps"] == STEPS, summary
    steps = [e for e in run if e["kind"] == "step"]
    erased = [e for e in steps if e["erased"]]
    assert erased and len({w for e in erased for w in e["erased"]}) == 1  # one slot's files were erasures ...
    slot = erased[0]["erased"][0]
    after = [e for e in steps if e["step"] > erased[-1]["step"]]
    assert after and all(not e["erased"] and e["files_dropped"] == 0 for e in after)  # ... then computed again
    joins = [e for e in run if e["kind"] == "worker" and e["worker"] == slot and e["state"] == "connected"]
    assert len(joins) == 2  # the replacement took the vacated slot
    assert instances_by_node(bed["moto"])["agent-1"] != lost  # (the lost agent is dead: the second join is its heir)
    messages = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    assert any("repairing agent-1" in m.get("message", "") for m in messages)
    assert any("the run has ended (completed)" in m.get("message", "") for m in messages)
    code, text = shield_ops("status", *bed["base"], "--format", "json")
    rows = {n["node"]: n for n in json.loads(text)["nodes"]}
    assert [h["instance_id"] for h in rows["agent-1"]["history"]] == [lost]
    # up after the finished run: a new run in a new train dir, said so (the PS would refuse the old one)
    code, text = shield_ops("up", *bed["base"], "--wheel", str(bed["wheel"]), "--format", "plain")
    assert code == 0 and "starting a new run in ~/shield/run-2" in text, text
    assert (home / "shield/RUN").read_text().strip() == "run-2" and (home / "shield/run-2/metrics.jsonl").exists()
    code, text = shield_ops("down", *bed["base"], "-y", "--format", "plain")
    assert code == 0, text


def clients_of(port: int) -> int:
    """Established TCP connections whose remote end is 127.0.0.1:``port`` (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
            count += 1
    return count


def replacement_started(output: str, lost: str) -> bool:
    for line in output.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("node") == "agent-1" and event.get("state") == "started" and event.get("instance") != lost:
                return True
    return False


def instances_by_node(url: str, name: str = NAME) -> dict[str, str]:
    """Node name -> instance id of the live (pending/running) instances of the cluster."""
    reply = boto_client(url).describe_instances(Filters=[
        {"Name": "tag:shield:cluster", "Values": [name]},
        {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    out = {}
    for reservation in reply["Reservations"]:
        for inst in reservation["Instances"]:
            out[next(t["Value"] for t in inst["Tags"] if t["Key"] == "shield:node")] = inst["InstanceId"]
    return out
