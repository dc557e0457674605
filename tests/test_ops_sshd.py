"""One end-to-end deploy against OpenSSH's real ``sshd`` on 127.0.0.1 (next to the asyncssh test servers).

The PS node is its own ``sshd -D`` (Debian's openssh-server) on a loopback port, with the host key shield-ops pinned
in that instance's user data and the cluster key as its only authorized key; it logs in a user whose home is a
temporary directory (a uid-0 alias made for the test, so it can run the interpreter of this test under /root). The
agent node is an asyncssh test server (one machine cannot give two sshd nodes the same user name with two homes).
shield-ops then does what it does on EC2 (moto here): upload the wheel and data over SFTP, make the venv, start the
PS and the agent as daemons, report status, run exec and logs; and a node presenting another host key is refused.

Skipped, with the reason, when not root or when sshd is absent and cannot be installed (``.ci/run`` installs it).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from shield_ops import nodes
from shield_ops.nodes import Endpoint, Node
from tests.test_ops_autostop import wheel  # noqa: F401  (a fixture)
from tests.test_ops_e2e import LOCAL_DEPLOY, RUNTIME, free_port, shield_ops
from tests.test_ops_fakes import FakeCloud, boto_client, moto_env  # noqa: F401  (moto_env is a fixture)

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
NAME = "e2e-sshd"


def sshd_unavailable() -> str | None:
    if not RUNTIME:
        return "`shield-ps serve --help` fails: no runtime to deploy"
    if os.geteuid() != 0:
        return "needs root: each node is a user of its own (useradd) served by its own sshd"
    if not os.access(SSHD, os.X_OK):
        return f"OpenSSH's sshd is not installed ({SSHD}): apt-get install -y openssh-server (.ci/run does)"
    if shutil.which("useradd") is None:
        return "useradd is missing"
    return None


pytestmark = pytest.mark.skipif(sshd_unavailable() is not None, reason=str(sshd_unavailable()))


class RealNodes:
    """Instance id -> a real sshd on 127.0.0.1, started on first resolution (as a node boots)."""

    def __init__(self, root: Path, cloud: FakeCloud, state_dir: Path, user: str) -> None:
        self.root, self.cloud, self.state_dir, self.user = root, cloud, state_dir, user
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}
        self.users: dict[str, str] = {}
        self.homes: dict[str, Path] = {}

    def start(self, instance_id: str, host_key: asyncssh.SSHKey) -> None:
        base = self.root / instance_id
        home = base / "home"
        home.mkdir(parents=True, exist_ok=True)
        user = self.user
        if instance_id not in self.users:
            subprocess.run(["useradd", "-o", "-u", "0", "-g", "0", "-M", "-d", str(home), "-s", "/bin/sh",
                            "-p", "*", user], check=True, timeout=30, capture_output=True)  # "*": no password, unlocked
            self.users[instance_id] = user
        key_file = base / "host_ed25519"
        key_file.write_bytes(host_key.export_private_key("openssh"))
        key_file.chmod(0o600)
        shutil.copy(self.state_dir / "id_ed25519.pub", base / "authorized_keys")
        port = self.ports.get(instance_id) or free_port()
        (base / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {key_file}\nPidFile {base}/sshd.pid\n"
            f"AuthorizedKeysFile {base}/authorized_keys\nStrictModes no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"AllowUsers {user}\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        log = open(base / "sshd.log", "ab")
        self.procs[instance_id] = subprocess.Popen([SSHD, "-D", "-e", "-f", str(base / "sshd_config")],
                                                   stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                time.sleep(0.1)
        self.ports[instance_id], self.homes[instance_id] = port, home

    def stop_sshd(self, instance_id: str) -> None:
        proc = self.procs.pop(instance_id, None)
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)

    def resolver(self, node: Node) -> Endpoint:
        if node.name != "ps":
            return self.cloud.resolver(node)
        if node.instance_id not in self.procs:
            self.start(node.instance_id, self.cloud.pinned_host_key(self.cloud.user_data(node.instance_id)))
        return Endpoint("127.0.0.1", self.ports[node.instance_id], "127.0.0.1")

    def close(self) -> None:
        for home in self.homes.values():  # the daemons the test started, then sshd, then the users
            stop = ("cd shield 2>/dev/null || exit 0; for r in ps agent supervisor; do [ -f $r.pid ] && "
                    "kill -TERM -- -$(cat $r.pid) 2>/dev/null; done; true")
            subprocess.run(["/bin/sh", "-c", stop], cwd=home, timeout=30)
        for instance_id in list(self.procs):
            self.stop_sshd(instance_id)
        for user in self.users.values():
            subprocess.run(["userdel", "-f", user], timeout=30, capture_output=True)  # -f: uid 0 is always "in use"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, moto_env: str, wheel: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    root = tmp_path_factory.mktemp("sshd")
    user = f"shieldops{os.getpid() % 100000}"
    root.chmod(0o755)
    ami = boto_client(moto_env).describe_images()["Images"][0]["ImageId"]
    config = root / "cluster.toml"
    config.write_text(f"""
[cluster]
name = "{NAME}"
region = "us-east-1"
[network]
zones = ["us-east-1a"]
operator_cidr = "127.0.0.1/32"
[nodes]
ami = "{ami}"
ssh_user = "{user}"
[ps]
instance_types = ["m5.large"]
port = {free_port()}
args = ["--scheme", "baseline", "--replication", "1", "--network", "LeNet", "--dataset", "MNIST", "--batch-size", "20",
        "--max-steps", "4", "--eval-freq", "4", "--aggregator", "mean", "--seed", "2"]
[agents]
count = 1
instance_types = ["m5.large"]
args = ["--threads", "1"]
{LOCAL_DEPLOY}""")
    state_dir = root / "state"
    cloud = FakeCloud(root / "fake", moto_env)
    cloud.state_dir = state_dir
    real = RealNodes(root / "nodes", cloud, state_dir, user)
    nodes.set_resolver(real.resolver)
    try:
        yield {"config": config, "real": real, "moto": moto_env, "wheel": wheel,
               "base": ["-c", str(config), "--state-dir", str(state_dir)]}
    finally:
        nodes.set_resolver(None)
        real.close()
        cloud.stop()


def test_deploy_start_and_operate_a_cluster_through_openssh(bed: dict[str, Any]) -> None:
    code, out = shield_ops("up", *bed["base"], "-y", "--wheel", str(bed["wheel"]), "--format", "plain")
    assert code == 0, out + "".join((p / "sshd.log").read_text()[-2000:] for p in (bed["real"].root).iterdir()
                                    if (p / "sshd.log").exists())
    assert out.count(" started") >= 2
    real = bed["real"]
    assert len(real.procs) == 1 and len(real.cloud.nodes) == 1
    deadline, report = time.monotonic() + 180, {}
    while time.monotonic() < deadline:
        code, text = shield_ops("status", *bed["base"], "--format", "json")
        report = json.loads(text)
        if report["ps"].get("finished"):
            break
        time.sleep(1)
    assert report["ps"].get("finished") == "completed" and report["ps"]["step"] == 3, report
    ps_home = next(iter(real.homes.values()))  # what the real sshd sessions did, in the user's home
    assert (ps_home / "shield/DEPLOYED").exists() and (ps_home / "shield/venv/bin/python").exists()
    assert (ps_home / "shield/run/checkpoints/step-00000004.npz").exists()
    code, out = shield_ops("exec", *bed["base"], "--node", "ps", "--", "echo", "via-openssh", "$HOME", "$(id -u)")
    assert code == 0 and out.split() == ["[ps]", "via-openssh", str(ps_home), "0"], out
    code, out = shield_ops("logs", *bed["base"], "--node", "ps", "-n", "3")
    assert code == 0 and out.startswith("[ps] ==> ps.log <==")
    # the PS's node comes back with another host key (say, re-imaged): refused, and the agent's node carries on
    ps = next(iter(real.procs))
    real.stop_sshd(ps)
    real.start(ps, asyncssh.generate_private_key("ssh-ed25519"))
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        code, out = shield_ops("exec", *bed["base"], "--", "echo", "hi")
    assert code == 1 and out.strip() == "[agent-0] hi", out
    assert "[ps] failed:" in err.getvalue() and "host key that does not match" in err.getvalue(), err.getvalue()
    code, out = shield_ops("down", *bed["base"], "-y", "--format", "plain")
    assert code == 0, out
