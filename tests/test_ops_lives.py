"""Every cluster life has its own runs, offline: moto's EC2 and S3, loopback SSH nodes, real daemons.

One cluster name, four lives (``up`` after ``down`` starts a new life): the first trains a long run and is downed
mid-run with checkpoints in the S3 mirror; the second, a short job of the same configuration, must train from step 0
(it once restored the old run, past its own end, and called that ``completed``); the third asks for the first life's
run with ``--resume-from`` but another configuration, and the PS refuses it by its configuration hash; the fourth
asks for it with the same configuration and continues it from its newest checkpoint.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops_beds import BASELINE_ARGS, open_bed
from tests.test_ops_autostop import events, wheel  # noqa: F401  (wheel is a fixture)
from tests.test_ops_e2e import RUNTIME, shield_ops
from tests.test_ops_fakes import moto_env  # noqa: F401  (moto_env is a fixture)
from tests.test_ops_heal import instances_by_node

pytestmark = pytest.mark.skipif(not RUNTIME, reason="`shield-ps serve --help` fails: no runtime to run")

NAME = "e2e-lives"
BUCKET = "shield-e2e-lives"
PREFIX = f"runs/{NAME}"


def ps_args(max_steps: int, *extra: str) -> list[str]:
    return [*BASELINE_ARGS, "--batch-size", "20", "--max-steps", str(max_steps), "--eval-freq", "3", "--seed", "4",
            *extra]


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, moto_env: str, wheel: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    import boto3

    saved = os.environ.get("AWS_ENDPOINT_URL_S3")
    os.environ["AWS_ENDPOINT_URL_S3"] = moto_env
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto_env).create_bucket(Bucket=BUCKET)
    sections = f'[autostop]\ninterval_s = 0.5\n[mirror]\nbucket = "{BUCKET}"\nprefix = "{PREFIX}"'
    try:
        with open_bed(tmp_path_factory.mktemp("lives"), moto_env, wheel, NAME, ps_args(100000),
                      sections=sections) as opened:
            yield opened
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        else:
            os.environ["AWS_ENDPOINT_URL_S3"] = saved


def s3_keys(url: str, prefix: str) -> list[str]:
    import boto3

    reply = boto3.client("s3", region_name="us-east-1", endpoint_url=url).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for obj in reply.get("Contents", []))


def life_of(bed: dict[str, Any]) -> str:
    """The current life: the cluster's security group id."""
    from tests.test_ops_fakes import boto_client

    groups = boto_client(bed["moto"]).describe_security_groups(
        Filters=[{"Name": "tag:shield:cluster", "Values": [NAME]}])["SecurityGroups"]
    assert len(groups) == 1, groups
    return str(groups[0]["GroupId"])


def up(bed: dict[str, Any], *extra: str) -> tuple[int, str]:
    return shield_ops("up", *bed["base"], "-y", "--wheel", str(bed["wheel"]), "--format", "plain", *extra)


def run_events(bed: dict[str, Any]) -> list[dict[str, Any]]:
    ps = instances_by_node(bed["moto"], NAME)["ps"]
    home = bed["cloud"].nodes[ps].home / "shield"
    return events(home / (home / "RUN").read_text().strip() / "metrics.jsonl")


def wait_summary(bed: dict[str, Any], timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    run: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        run = run_events(bed)
        if any(e["kind"] == "summary" for e in run):
            break
        time.sleep(0.5)
    assert any(e["kind"] == "summary" for e in run), run[-5:]
    return run


def down(bed: dict[str, Any]) -> None:
    """``down``, then wait (at most 60 s) until the downed PS's port is free: every life's PS runs on this one
    machine at the same port, where a real new life gets new instances; the next life's PS found the port still
    held by the last one's exiting process (`port ... is in use`) about one full suite in three."""
    import socket

    code, out = shield_ops("down", *bed["base"], "-y", "--format", "plain")
    assert code == 0, out
    deadline = time.monotonic() + 60
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the PS binds: only a listener blocks it
            try:
                sock.bind(("127.0.0.1", bed["port"]))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"port {bed['port']} still held 60 s after down") from None
        time.sleep(0.2)


def test_a_new_cluster_life_never_resumes_the_previous_life_run_and_resume_from_checks_the_hash(
        bed: dict[str, Any]) -> None:
    # life 1: a long run, downed mid-run once a checkpoint at step 9 or later is in the mirror
    code, out = up(bed)
    assert code == 0, out
    life1 = life_of(bed)
    checkpoints = f"{PREFIX}/{life1}/run/checkpoints/"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(int(k[-12:-4]) >= 9 for k in s3_keys(bed["moto"], checkpoints)):
        time.sleep(0.5)
    assert any(int(k[-12:-4]) >= 9 for k in s3_keys(bed["moto"], checkpoints)), out
    down(bed)
    kept = s3_keys(bed["moto"], checkpoints)
    step = max(int(k[-12:-4]) for k in kept)

    # life 2: a 6-step job of the same configuration starts from scratch and trains its 6 steps
    code, out = up(bed, "--set", "ps.args=" + json.dumps(ps_args(6)))
    assert code == 0 and "a new run ~/shield/run" in out and "restored" not in out, out
    life2 = life_of(bed)
    assert life2 != life1
    run = wait_summary(bed, 180)
    jobs, summary = [e for e in run if e["kind"] == "job"], [e for e in run if e["kind"] == "summary"][-1]
    assert len(jobs) == 1 and jobs[0]["start_step"] == 0 and not jobs[0]["resumed"], jobs
    assert summary["reason"] == "completed" and summary["steps"] == 6, summary
    assert summary["steps_trained"] == 6 and summary["resumed_from"] is None, summary
    code, text = shield_ops("status", *bed["base"])
    assert "finished: completed (6 steps trained in this run, from scratch)" in text, text
    assert s3_keys(bed["moto"], checkpoints) == kept  # the old life's run is left as it was
    assert s3_keys(bed["moto"], f"{PREFIX}/{life2}/run/checkpoints/")  # the new life mirrors its own run
    down(bed)

    source = f"s3://{BUCKET}/{PREFIX}/{life1}/run"
    # life 3: the old run under another configuration (another learning rate): the PS refuses its checkpoint
    code, out = up(bed, "--resume-from", source, "--set", "ps.args=" + json.dumps(ps_args(step + 3, "--lr", "0.5")))
    assert code == 1 and f"restored the newest checkpoint (step {step}) of {source}" in out, out
    assert "was made with another configuration" in out and "lr:" in out, out
    down(bed)

    # life 4: the same configuration continues the old run from its newest checkpoint
    code, out = up(bed, "--resume-from", source, "--set", "ps.args=" + json.dumps(ps_args(step + 3)))
    assert code == 0, out
    run = wait_summary(bed, 180)
    job, summary = [e for e in run if e["kind"] == "job"][-1], [e for e in run if e["kind"] == "summary"][-1]
    assert job["resumed"] and job["start_step"] == step, job
    assert summary["reason"] == "completed" and summary["steps"] == step + 3, summary
    assert summary["steps_trained"] == 3 and summary["resumed_from"] == step, summary
    life4 = life_of(bed)
    assert s3_keys(bed["moto"], f"{PREFIX}/{life4}/run/metrics.jsonl")  # continued under the new life's name
    down(bed)
