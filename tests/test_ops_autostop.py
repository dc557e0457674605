"""Never a runaway bill, offline: moto's EC2, loopback SSH nodes, real PS/agent daemons, the real supervisor and
each instance's own boot watchdog (the fake hypervisor boots the user data and answers ``shutdown`` as EC2 does).

Short clusters in turn, each brought up and down by its test: one ends its run and terminates itself
(``--down-when-done``); one is stopped by the supervisor when its cost reaches ``--max-cost`` while training, and
why survives its PS node; one has a job the PS refuses, so the PS never starts and the cluster ends; one is only
provisioned, never deployed, and its idle instances end themselves from boot. Nothing here waits on the operator:
after ``up`` returns, only the supervisor and the instances act.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shield_ops.supervisor import pid_alive
from tests.ops_beds import BASELINE_ARGS, open_bed
from tests.test_ops_e2e import RUNTIME, shield_ops, wheel  # noqa: F401  (a fixture)
from tests.test_ops_fakes import boto_client, moto_env  # noqa: F401  (moto_env is a fixture)

pytestmark = pytest.mark.skipif(not RUNTIME, reason="`shield-ps serve --help` fails: no runtime to supervise")

NAME = "e2e-stop"
TAG = {"Name": "tag:shield:cluster", "Values": [NAME]}


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, moto_env: str, wheel: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    ps_args = (*BASELINE_ARGS, "--batch-size", "20", "--max-steps", "6", "--eval-freq", "3", "--byzantine", "0",
               "--seed", "3")
    with open_bed(tmp_path_factory.mktemp("stop"), moto_env, wheel, NAME, ps_args,
                  sections="[autostop]\ninterval_s = 0.5") as opened:
        yield opened


def instances(url: str) -> dict[str, str]:
    """Instance id -> EC2 state of everything tagged with this cluster."""
    reply = boto_client(url).describe_instances(Filters=[TAG])
    return {i["InstanceId"]: i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}


def wait_all_terminated(url: str, ids: set[str], timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    states = instances(url)
    while time.monotonic() < deadline and any(states.get(i) != "terminated" for i in ids):
        time.sleep(1.0)
        states = instances(url)
    return states


def ps_home(bed: dict[str, Any], live: set[str]) -> Path:
    ec2 = boto_client(bed["moto"])
    for reservation in ec2.describe_instances(InstanceIds=sorted(live))["Reservations"]:
        for inst in reservation["Instances"]:
            if {"Key": "shield:node", "Value": "ps"} in inst["Tags"]:
                return bed["cloud"].nodes[inst["InstanceId"]].home
    raise AssertionError("no PS instance")


def events(metrics: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def test_down_when_done_terminates_the_cluster_after_the_final_checkpoint(bed: dict[str, Any]) -> None:
    code, out = shield_ops("up", *bed["base"], "-y", "--down-when-done", "--wheel", str(bed["wheel"]),
                           "--format", "plain")
    assert code == 0, out
    assert "supervised" in out
    ids = set(instances(bed["moto"]))
    assert len(ids) == 3
    home = ps_home(bed, ids)
    states = wait_all_terminated(bed["moto"], ids, timeout_s=240)  # the run, then the supervisor's decision
    assert all(states[i] == "terminated" for i in ids), (states, (home / "shield/logs/supervisor.log").read_text())
    decision = json.loads((home / "shield/supervisor-state.json").read_text())
    assert decision["decision"] == "run-completed" and sorted(decision["terminating"]) == sorted(ids)
    summary = [e for e in events(home / "shield/run/metrics.jsonl") if e["kind"] == "summary"]
    assert len(summary) == 1 and summary[0]["reason"] == "completed" and summary[0]["steps"] == 6
    assert (home / "shield/run/checkpoints/step-00000006.npz").exists()  # the final checkpoint was safe first
    code, text = shield_ops("status", *bed["base"], "--format", "json")
    report = json.loads(text)
    assert code == 0 and {n["state"] for n in report["nodes"]} == {"lost"}, report
    assert report["cost_usd"] > 0 and report["usd_per_hour"] == 0  # terminated instances still cost what they ran
    assert all(len(n["history"]) == 1 for n in report["nodes"])
    code, out = shield_ops("down", *bed["base"], "-y", "--format", "plain")
    assert code == 0 and "cost in all: $" in out, out
    assert not boto_client(bed["moto"]).describe_security_groups(Filters=[TAG])["SecurityGroups"]


def test_max_cost_stops_a_running_cluster_and_the_autostop_reason_survives_the_ps_node(bed: dict[str, Any]) -> None:
    # moto prices every type at $0.00001/h: three instances pass $6e-7 about 70 s after their launch
    code, out = shield_ops("up", *bed["base"], "-y", "--max-cost", "6e-7", "--set", "ps.args=" + json.dumps(
        ["--scheme", "baseline", "--replication", "1", "--network", "LeNet", "--dataset", "MNIST", "--batch-size",
         "20", "--max-steps", "100000", "--eval-freq", "50", "--aggregator", "mean", "--seed", "3"]),
        "--wheel", str(bed["wheel"]), "--format", "plain")
    assert code == 0, out
    ids = set(instances(bed["moto"])) - {i for i, s in instances(bed["moto"]).items() if s == "terminated"}
    assert len(ids) == 3
    home = ps_home(bed, ids)
    states = wait_all_terminated(bed["moto"], ids, timeout_s=180)
    assert all(states[i] == "terminated" for i in ids), (states, (home / "shield/logs/supervisor.log").read_text())
    decision = json.loads((home / "shield/supervisor-state.json").read_text())
    assert decision["decision"] == "max-cost" and decision["cost_usd"] > 0, decision
    # stopped before the budget (unless a slow deploy had spent it before the supervisor's first look)
    assert decision["decided_cost_usd"] <= 6e-7 or decision["tick"] == 1, decision
    run = events(home / "shield/run/metrics.jsonl")
    assert not any(e["kind"] == "summary" and e["reason"] == "completed" for e in run)  # cut short, as asked
    assert pid_alive(home / "shield/ps.pid") is None  # the PS was stopped first (a zombie is not alive)
    assert "stopping the PS" in (home / "shield/logs/supervisor.log").read_text()
    newest = max(int(p.name[5:13]) for p in (home / "shield/run/checkpoints").glob("step-*.npz"))
    fake = next(f for f in bed["cloud"].nodes.values() if f.home == home)
    deadline = time.monotonic() + 60
    while not fake.dead and time.monotonic() < deadline:  # the hypervisor stops a terminated node's processes
        time.sleep(0.2)
    assert fake.dead
    shutil.rmtree(home)  # the PS node's disk went with its instance: its decision file is gone
    (bed["state"] / "autostop.json").unlink(missing_ok=True)  # and nothing local has read the cloud's record yet
    code, text = shield_ops("status", *bed["base"], "--format", "json")
    report = json.loads(text)
    assert code == 0 and {n["state"] for n in report["nodes"]} == {"lost"}, report
    auto = report["autostop"]
    assert auto is not None and auto["decision"] == "max-cost" and auto["source"] == "record", auto
    record = auto["record"]
    assert record["cost_usd"] > 0 and record["run"] == "run" and record["last_checkpoint"] == newest, record
    assert record["checkpoint_url"] is None and "(on the PS node's disk, gone with it)" in auto["line"]  # no mirror
    assert json.loads((bed["state"] / "autostop.json").read_text())["reason"] == "max-cost"  # kept locally too
    code, table = shield_ops("status", *bed["base"])
    assert code == 0 and "autostop: max-cost at " in table and "final cost $" in table, table
    assert f"last checkpoint: step {record['last_checkpoint']} of run" in table
    code, out = shield_ops("down", *bed["base"], "-y", "--format", "plain")
    assert code == 0 and "autostop: max-cost at " in out, out


def test_ps_never_starts_and_the_cluster_ends_under_down_when_done(bed: dict[str, Any]) -> None:
    """A job `serve` refuses (a batch size that is no multiple of the files): the PS never listens, and with
    --down-when-done (and --max-cost) the supervisor, started before the PS, ends the cluster and records why."""
    bad = [*BASELINE_ARGS, "--batch-size", "1", "--max-steps", "6", "--seed", "3"]
    before = set(instances(bed["moto"]))
    started = time.monotonic()
    code, out = shield_ops("up", *bed["base"], "-y", "--down-when-done", "--max-cost", "1", "--set",
                           "ps.args=" + json.dumps(bad), "--wheel", str(bed["wheel"]), "--format", "plain")
    failed_at = time.monotonic()
    assert code == 1 and "--batch-size 1 must be a multiple" in out, out
    assert "the supervisor on the PS node ends the cluster" in out, out
    live = set(instances(bed["moto"])) - before  # this up's instances (the supervisor may have ended them already)
    assert len(live) == 3
    states = wait_all_terminated(bed["moto"], live, timeout_s=120)
    ended_at = time.monotonic()
    assert all(states[i] == "terminated" for i in live), states
    print(f"failed PS start -> all instances terminated: {ended_at - failed_at:.1f}s after `up` returned "
          f"({ended_at - started:.1f}s after it began)")
    code, text = shield_ops("status", *bed["base"], "--format", "json")
    auto = json.loads(text)["autostop"]
    assert auto is not None and auto["decision"] == "failed-start", auto
    assert "--batch-size 1 must be a multiple" in auto["why"], auto
    code, out = shield_ops("down", *bed["base"], "-y", "--format", "plain")
    assert code == 0 and "autostop: failed-start at " in out, out


def test_before_the_ps_idle_instances_end_themselves_from_boot(bed: dict[str, Any]) -> None:
    """`up --only provision` and nothing after (the operator's laptop closed before any deploy): no supervisor, no
    SSH; each instance's boot watchdog sees it idle and shuts it down, and EC2 terminates it."""
    before = set(instances(bed["moto"]))
    code, out = shield_ops("up", *bed["base"], "-y", "--only", "provision", "--set", "autostop.idle_minutes=0.25",
                           "--format", "plain")
    assert code == 0 and "after 15s idle" in out, out
    live = set(instances(bed["moto"])) - before  # this up's instances (a slow up may return after they idled out)
    assert len(live) == 3
    states = wait_all_terminated(bed["moto"], live, timeout_s=150)
    assert all(states[i] == "terminated" for i in live), (states, bed["cloud"].shutdowns)
    assert sorted(i for i, how, _ in bed["cloud"].shutdowns if i in live and how == "terminate") == sorted(live)
    for instance_id in live:
        fake = bed["cloud"].nodes[instance_id]
        assert json.loads((fake.rootfs / "var/lib/shield/watchdog.json").read_text())["reason"] == "idle"
        assert not (fake.home / "shield/venv").exists()  # never deployed: the watchdog came with the instance
    code, out = shield_ops("down", *bed["base"], "-y", "--format", "plain")
    assert code == 0, out
