"""A spot interruption notice starts the replacement before the instance dies, offline: every fake node has its own
fake IMDSv2; agent-1's starts answering an ``instance-action`` mid-run. Its agent (``--spot-watch``) writes the
notice and leaves the PS (which records why); ``up --watch`` sees the notice in the status probe and launches the
heir while the old instance is still running; the heir joins the live PS in the vacated slot; then EC2 reclaims the
old instance, and the run completes."""
from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shield_ops.nodes import SPOT_NOTICE_TAG
from tests.ops_beds import open_bed, start_watch
from tests.test_ops_autostop import events, wheel  # noqa: F401  (wheel is a fixture)
from tests.test_ops_e2e import RUNTIME, shield_ops
from tests.test_ops_fakes import boto_client, moto_env  # noqa: F401  (moto_env is a fixture)
from tests.test_ops_heal import PS_ARGS, STEPS, clients_of, instances_by_node, replacement_started, wait_running

aiohttp_web = pytest.importorskip("aiohttp.web")
pytestmark = pytest.mark.skipif(not RUNTIME, reason="`shield-ps serve --help` fails: no runtime to run")

NAME = "e2e-notice"
NOTICE = {"action": "terminate", "time": "2026-11-29T23:59:00Z"}


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, moto_env: str, wheel: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    from tests.test_ops_spot import FakeIMDS, serve

    with open_bed(tmp_path_factory.mktemp("notice"), moto_env, wheel, NAME, PS_ARGS,
                  agent_args=("--threads", "1", "--spot-watch")) as opened:
        imds: dict[str, FakeIMDS] = {}
        runners: list[Any] = []

        async def node_env(instance_id: str) -> dict[str, str]:  # on the fake nodes' loop: one IMDS per instance
            imds[instance_id] = FakeIMDS()
            runner, port = await serve(imds[instance_id])
            runners.append(runner)
            return {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}/"}
        opened["cloud"].node_env = node_env
        opened["imds"] = imds
        try:
            yield opened
        finally:
            async def cleanup() -> None:
                for runner in runners:
                    await runner.cleanup()
            opened["cloud"].loop.call(cleanup())


def test_a_spot_notice_starts_the_replacement_before_the_instance_dies(bed: dict[str, Any]) -> None:
    thread, out, result = start_watch(bed)
    deadline = time.monotonic() + 240
    first, metrics = wait_running(bed, NAME, out, deadline)
    home = bed["cloud"].nodes[first["ps"]].home
    doomed = first["agent-1"]
    bed["imds"][doomed].notice = NOTICE  # EC2's two-minute warning, to agent-1's instance only

    def left() -> list[dict[str, Any]]:
        return [e for e in events(metrics) if e["kind"] == "worker" and e["state"] == "left"]
    while time.monotonic() < deadline and not left():
        time.sleep(0.2)
    assert [e.get("reason") for e in left()] == ["spot interruption"], out.getvalue()[-3000:]
    slot = left()[0]["worker"]
    pid = int((home / "shield/ps.pid").read_text())
    os.killpg(pid, signal.SIGSTOP)  # the run outlasts the replacement on any machine (see test_ops_heal)
    try:
        while time.monotonic() < deadline and not (replacement_started(out.getvalue(), doomed)
                                                   and clients_of(bed["port"]) >= 2):
            time.sleep(0.2)
        assert replacement_started(out.getvalue(), doomed), out.getvalue()[-3000:]
        assert clients_of(bed["port"]) >= 2
        # the heir is up and dialling the PS while the noticed instance still runs: nothing waited for its death
        reply = boto_client(bed["moto"]).describe_instances(InstanceIds=[doomed])
        inst = reply["Reservations"][0]["Instances"][0]
        assert inst["State"]["Name"] == "running"
        assert {t["Key"]: t["Value"] for t in inst["Tags"]}[SPOT_NOTICE_TAG] == NOTICE["time"]
    finally:
        os.killpg(pid, signal.SIGCONT)
    boto_client(bed["moto"]).terminate_instances(InstanceIds=[doomed])  # EC2 reclaims it at the notice's time
    bed["cloud"].kill(doomed)
    thread.join(timeout=300)
    assert not thread.is_alive(), out.getvalue()[-3000:]
    assert result.get("code") == 0, out.getvalue()[-3000:]
    run = events(metrics)
    summary = [e for e in run if e["kind"] == "summary"]
    assert summary and summary[-1]["reason"] == "completed" and summary[-1]["steps"] == STEPS, summary
    joins = [e for e in run if e["kind"] == "worker" and e["worker"] == slot and e["state"] == "connected"]
    assert len(joins) == 2  # the heir took the vacated slot
    steps = [e for e in run if e["kind"] == "step"]
    assert steps[-1]["erased"] == [] and steps[-1]["files_dropped"] == 0  # ... and computed to the end
    assert instances_by_node(bed["moto"], NAME)["agent-1"] != doomed
    messages = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    assert any(f"spot interruption notice on {doomed}" in m.get("message", "") for m in messages)
    code, text = shield_ops("status", *bed["base"], "--format", "json")
    rows = {n["node"]: n for n in json.loads(text)["nodes"]}
    assert code == 0 and [h["instance_id"] for h in rows["agent-1"]["history"]] == [doomed]
    assert rows["agent-1"]["spot_notice"] is None  # the heir has none
    code, text = shield_ops("down", *bed["base"], "-y", "--format", "plain")
    assert code == 0, text
