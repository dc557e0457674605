"""The PS survives the PS, offline: moto's EC2 and S3 on 127.0.0.1, loopback SSH nodes, real daemons.

The supervisor on the PS node mirrors checkpoints and metrics to S3; the PS instance is terminated mid-run (its node's
processes die with it); ``up --watch`` launches a replacement PS, which restores the newest checkpoint from S3 and
resumes; the agents reconnect to it; the run ends with the same final parameters, bit for bit, as an uninterrupted
run of the same configuration.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.ops_beds import open_bed, start_watch
from tests.test_ops_autostop import events, wheel  # noqa: F401  (wheel is a fixture)
from tests.test_ops_e2e import MNIST, REPO, RUNTIME, shield_ops
from tests.test_ops_fakes import boto_client, moto_env  # noqa: F401  (moto_env is a fixture)
from tests.test_ops_heal import instances_by_node as _by_node

pytestmark = pytest.mark.skipif(not RUNTIME, reason="`shield-ps serve --help` fails: no runtime to mirror")

NAME = "e2e-ps"
BUCKET = "shield-e2e-mirror"
STEPS = 20
PS_ARGS = ["--scheme", "baseline", "--replication", "1", "--network", "LeNet", "--dataset", "MNIST",
           "--batch-size", "600", "--max-steps", str(STEPS), "--eval-freq", "5", "--aggregator", "mean",
           "--seed", "7"]


def by_node(url: str) -> dict[str, str]:
    return _by_node(url, NAME)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, moto_env: str, wheel: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    import boto3

    saved = os.environ.get("AWS_ENDPOINT_URL_S3")
    os.environ["AWS_ENDPOINT_URL_S3"] = moto_env
    boto3.client("s3", region_name="us-east-1", endpoint_url=moto_env).create_bucket(Bucket=BUCKET)
    sections = f'[autostop]\ninterval_s = 0.5\n[mirror]\nbucket = "{BUCKET}"\nprefix = "runs/{NAME}"'
    try:
        with open_bed(tmp_path_factory.mktemp("mirror"), moto_env, wheel, NAME, PS_ARGS, sections=sections) as opened:
            yield opened
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        else:
            os.environ["AWS_ENDPOINT_URL_S3"] = saved


def mirrored_checkpoints(url: str) -> list[str]:
    import boto3

    reply = boto3.client("s3", region_name="us-east-1", endpoint_url=url).list_objects_v2(
        Bucket=BUCKET, Prefix=f"runs/{NAME}/")  # runs/NAME/<life>/run/checkpoints/step-*.npz
    return sorted(obj["Key"] for obj in reply.get("Contents", []) if "/run/checkpoints/" in obj["Key"])


def final_params(run_dir: Path) -> np.ndarray:
    with np.load(run_dir / "checkpoints" / f"step-{STEPS:08d}.npz", allow_pickle=False) as data:
        return np.array(data["params"])


def reference_run(root: Path) -> np.ndarray:
    """The same configuration, uninterrupted, with two local agents."""
    ref = root / "reference"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    done = subprocess.run([sys.executable, "-m", "shield_ps.cli", "serve", "--local-agents", "2", "--workers", "2",
                           "--host", "127.0.0.1", "--port", "0", "--data-dir", str(MNIST), "--train-dir", str(ref),
                           "--quiet", *PS_ARGS], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return final_params(ref)


def test_a_lost_ps_is_replaced_and_resumes_from_the_s3_checkpoint(bed: dict[str, Any]) -> None:
    thread, out, result = start_watch(bed)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not mirrored_checkpoints(bed["moto"]):
        time.sleep(0.5)
    assert mirrored_checkpoints(bed["moto"]), out.getvalue()[-3000:]
    lost = by_node(bed["moto"])["ps"]
    old_home = bed["cloud"].nodes[lost].home
    boto_client(bed["moto"]).terminate_instances(InstanceIds=[lost])  # a spot interruption of the PS
    bed["cloud"].kill(lost)
    lost_at = max(e["step"] for e in events(old_home / "shield/run/metrics.jsonl") if e["kind"] == "step")
    thread.join(timeout=400)
    assert not thread.is_alive(), out.getvalue()[-3000:]
    assert result.get("code") == 0, out.getvalue()[-3000:]
    heir = by_node(bed["moto"]).get("ps")
    assert heir is not None and heir != lost, (by_node(bed["moto"]), out.getvalue()[-3000:])
    run_dir = bed["cloud"].nodes[heir].home / "shield/run"
    run = events(run_dir / "metrics.jsonl")
    jobs = [e for e in run if e["kind"] == "job"]
    assert jobs[-1]["resumed"] and 5 <= jobs[-1]["start_step"] <= lost_at + 1, (jobs, lost_at)
    summary = [e for e in run if e["kind"] == "summary"]
    assert summary[-1]["reason"] == "completed" and summary[-1]["steps"] == STEPS
    assert not [e for e in run if e["kind"] == "step" and e["step"] >= jobs[-1]["start_step"] and e["erased"]]
    messages = [json.loads(line).get("message", "") for line in out.getvalue().splitlines() if line.startswith("{")]
    assert any("restored the newest checkpoint (step " in m and f"runs/{NAME}/sg-" in m for m in messages)
    np.testing.assert_array_equal(final_params(run_dir), reference_run(bed["root"]))  # bit for bit
    code, text = shield_ops("status", *bed["base"], "--format", "json")
    rows = {n["node"]: n for n in json.loads(text)["nodes"]}
    assert [h["instance_id"] for h in rows["ps"]["history"]] == [lost]
    code, text = shield_ops("down", *bed["base"], "-y", "--format", "plain")
    assert code == 0, text
