"""Test beds for the shield-ops end-to-end tests: a 1 + N node cluster on moto's EC2 and loopback SSH nodes
(tests/test_ops_fakes.py), its cluster.toml, and ``shield-ops up --watch`` run in a thread."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from shield_ops import cli, nodes
from shield_ops.deploy import stop_script
from tests.test_ops_e2e import LOCAL_DEPLOY, free_port, node_env
from tests.test_ops_fakes import FakeCloud, boto_client

#: LeNet on MNIST, no replication, the mean: the cheapest run shield-ps serves.
BASELINE_ARGS = ("--scheme", "baseline", "--replication", "1", "--network", "LeNet", "--dataset", "MNIST",
                 "--aggregator", "mean")


def cluster_toml(name: str, ami: str, port: int, ps_args: tuple[str, ...] | list[str], *, agents: int = 2,
                 agent_args: tuple[str, ...] = ("--threads", "1"), sections: str = "") -> str:
    """A cluster.toml of one PS and ``agents`` agents in one zone, deployed from this checkout (LOCAL_DEPLOY);
    ``sections`` are more TOML sections ([autostop], [mirror], ...)."""
    return f"""
[cluster]
name = "{name}"
region = "us-east-1"
[network]
zones = ["us-east-1a"]
operator_cidr = "127.0.0.1/32"
[nodes]
ami = "{ami}"
[ps]
instance_types = ["m5.large"]
port = {port}
args = {json.dumps(list(ps_args))}
[agents]
count = {agents}
instance_types = ["m5.large"]
args = {json.dumps(list(agent_args))}
{sections}
{LOCAL_DEPLOY}"""


@contextlib.contextmanager
def open_bed(root: Path, moto_env: str, wheel: Path, name: str, ps_args: tuple[str, ...] | list[str], *,
             agent_args: tuple[str, ...] = ("--threads", "1"), sections: str = "") -> Iterator[dict[str, Any]]:
    """Write the cluster's config under ``root`` and route its nodes to fake loopback SSH nodes; on exit stop every
    daemon the nodes run and the fake cloud."""
    ami = boto_client(moto_env).describe_images()["Images"][0]["ImageId"]
    config = root / "cluster.toml"
    port = free_port()
    config.write_text(cluster_toml(name, ami, port, ps_args, agent_args=agent_args, sections=sections))
    state_dir = root / "state"
    cloud = FakeCloud(root / "nodes", moto_env)
    cloud.state_dir = state_dir
    cloud.start_hypervisor()
    nodes.set_resolver(cloud.resolver)
    try:
        yield {"config": config, "state": state_dir, "cloud": cloud, "moto": moto_env, "wheel": wheel, "port": port,
               "root": root, "base": ["-c", str(config), "--state-dir", str(state_dir)]}
    finally:
        for fake in cloud.nodes.values():
            subprocess.run(["/bin/sh", "-c", stop_script()], env=node_env(fake.home), timeout=30)
        nodes.set_resolver(None)
        cloud.stop()


def start_watch(bed: dict[str, Any]) -> tuple[threading.Thread, io.StringIO, dict[str, int]]:
    """``shield-ops up -y --watch`` on ``bed`` in a thread: the thread, what it prints (JSON lines) and, once it
    returns, its exit code in ``result["code"]``."""
    out = io.StringIO()
    result: dict[str, int] = {}

    def watch() -> None:
        with redirect_stdout(out):
            result["code"] = cli.main(["up", *bed["base"], "-y", "--watch", "--watch-interval", "0.5",
                                       "--wheel", str(bed["wheel"]), "--format", "json"])
    thread = threading.Thread(target=watch, name="shield-ops-watch", daemon=True)
    thread.start()
    return thread, out, result
