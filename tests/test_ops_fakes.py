"""Offline stand-ins for the cloud, shared by the shield-ops tests: moto's EC2 server, SSH nodes, a fake IMDS.

* moto runs in server mode on 127.0.0.1 and is reached through aiobotocore by ``AWS_ENDPOINT_URL_EC2``.
* Each fake node is a real asyncssh server on 127.0.0.1:0 (one loop on a background thread for all of them, so the
  CLI's own ``asyncio.run`` works) running real shell commands in its own home directory, with SFTP chrooted there.
  A node is created the first time shield-ops resolves an instance id: its host key is the one shield-ops pinned in
  that instance's cloud-init user data (read back from moto), and it accepts only the cluster's client key.
* With :meth:`FakeCloud.start_hypervisor`, a thread plays EC2's side of an instance's life: an instance that runs in
  moto boots (its user data's cloud-init ``bootcmd`` runs as a shell command, with ``SHIELD_ROOTFS`` and
  ``SHIELD_NODE_HOME`` pointing into the node's directories and a ``shutdown`` on its PATH that asks the
  hypervisor), its node's SSH server starts; ``shutdown`` on a node is answered as EC2 answers it, by the instance's
  ``InstanceInitiatedShutdownBehavior`` (terminate or stop); and an instance moto reports terminated has its node's
  processes stopped and SSH refused, as a terminated instance does.

The tests at the bottom check the fakes themselves.
"""
from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from shield_ops.nodes import Endpoint, Node


# ------------------------------------------------------------------------------------------- moto
@pytest.fixture(scope="module")
def moto_env() -> Iterator[str]:
    """A moto EC2 server on loopback, with the environment aiobotocore/boto3 need to reach only it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_SESSION_TOKEN="testing",
                      AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL_EC2=url, AWS_DEFAULT_REGION="us-east-1",
                      AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    os.environ.pop("AWS_PROFILE", None)
    try:
        yield url
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_EC2_METADATA_DISABLED",
            "AWS_ENDPOINT_URL_EC2", "AWS_DEFAULT_REGION", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
            "AWS_PROFILE")


def boto_client(url: str) -> Any:
    import boto3

    return boto3.client("ec2", region_name="us-east-1", endpoint_url=url)


# ------------------------------------------------------------------------------------------- SSH nodes
class LoopThread:
    """An asyncio loop on a daemon thread; :meth:`call` runs a coroutine there and waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-nodes", daemon=True)
        self.thread.start()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def _pump(src: asyncio.StreamReader, dst: Any) -> None:
    while chunk := await src.read(65536):
        dst.write(chunk)


def _handler(home: Path, extra: dict[str, str]) -> Callable[[asyncssh.SSHServerProcess], Any]:
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "LANG": "C.UTF-8", "USER": "ubuntu",
           "SHELL": "/bin/sh", "TMPDIR": os.environ.get("TMPDIR", "/tmp")}

    async def handle(process: asyncssh.SSHServerProcess) -> None:
        # what an instance profile and the region's endpoints give a real node: AWS access (here: moto's)
        aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        if not process.command:
            process.stderr.write(b"fake node: no interactive shell\n")
            process.exit(1)
            return
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", process.command, cwd=home, env={**env, **aws, **extra}, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await asyncio.gather(_pump(proc.stdout, process.stdout), _pump(proc.stderr, process.stderr))
            status = await proc.wait()
        except asyncio.CancelledError:
            proc.kill()
            raise
        except (asyncssh.Error, OSError, BrokenPipeError):  # the client went away (e.g. logs --follow ended)
            proc.kill()
            status = 255
        process.exit(status)
    return handle


@dataclass
class FakeNode:
    instance_id: str
    home: Path
    port: int
    acceptor: Any
    peers: list[Any] = field(default_factory=list)
    host_key: Any = None
    client_pub: bytes = b""
    dead: bool = False

    @property
    def rootfs(self) -> Path:
        return self.home.parent / f"{self.instance_id}.rootfs"


class FakeCloud:
    """Fake nodes created on first resolution of an instance id, plus a record of every resolution."""

    def __init__(self, root: Path, moto_url: str) -> None:
        self.root = root
        self.moto_url = moto_url
        self.loop = LoopThread()
        self.nodes: dict[str, FakeNode] = {}
        self.resolved: list[tuple[str, Endpoint]] = []
        self.state_dir: Path | None = None
        #: per-node environment of its commands (awaited on the nodes' loop when the node's server starts)
        self.node_env: Callable[[str], Awaitable[dict[str, str]]] | None = None
        self._lock = threading.RLock()
        self._hypervisor: threading.Thread | None = None
        self._halt = threading.Event()
        #: (instance id, what EC2 did on its instance-initiated shutdown, when): the hypervisor's record
        self.shutdowns: list[tuple[str, str, float]] = []
        self.booted: dict[str, float] = {}

    def user_data(self, instance_id: str) -> str:
        reply = boto_client(self.moto_url).describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        return base64.b64decode(reply["UserData"]["Value"]).decode()

    @staticmethod
    def pinned_host_key(user_data: str) -> asyncssh.SSHKey:
        lines = user_data.splitlines()
        start = lines.index("  ed25519_private: |") + 1
        body = [ln[4:] for ln in lines[start:] if ln.startswith("    ")]
        return asyncssh.import_private_key("\n".join(body) + "\n")

    async def _start(self, instance_id: str, host_key: asyncssh.SSHKey, client_pub: bytes, port: int = 0) -> FakeNode:
        home = self.root / instance_id
        home.mkdir(parents=True, exist_ok=True)
        node = FakeNode(instance_id, home, 0, None, host_key=host_key, client_pub=client_pub)
        extra = await self.node_env(instance_id) if self.node_env is not None else {}

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                node.peers.append(conn.get_extra_info("peername"))

        node.acceptor = await asyncssh.create_server(
            Server, "127.0.0.1", port, server_host_keys=[host_key], reuse_address=True,
            authorized_client_keys=asyncssh.import_authorized_keys(client_pub.decode()),
            process_factory=_handler(home, extra), encoding=None,
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(home).encode()))
        node.port = node.acceptor.sockets[0].getsockname()[1]
        return node

    def add_node(self, instance_id: str, host_key: asyncssh.SSHKey) -> FakeNode:
        assert self.state_dir is not None, "set FakeCloud.state_dir before shield-ops connects"
        client_pub = (self.state_dir / "id_ed25519.pub").read_bytes()
        node = self.loop.call(self._start(instance_id, host_key, client_pub))
        self.nodes[instance_id] = node
        return node

    def resolver(self, node: Node) -> Endpoint:
        with self._lock:
            fake = self.nodes.get(node.instance_id)
            if fake is None:
                fake = self.add_node(node.instance_id, self.pinned_host_key(self.user_data(node.instance_id)))
        endpoint = Endpoint("127.0.0.1", fake.port, "127.0.0.1")
        self.resolved.append((node.instance_id, endpoint))
        return endpoint

    def suspend(self, instance_id: str) -> None:
        """The node stops answering SSH (its processes go on), until :meth:`resume`."""
        node = self.nodes[instance_id]

        async def close() -> None:
            node.acceptor.close()
            await node.acceptor.wait_closed()
        self.loop.call(close())

    def resume(self, instance_id: str) -> None:
        old = self.nodes[instance_id]
        self.nodes[instance_id] = self.loop.call(self._start(instance_id, old.host_key, old.client_pub, old.port))

    def kill(self, instance_id: str) -> None:
        """What the instance's death does to its node: every daemon of it dies and SSH is refused."""
        from shield_ops.deploy import stop_script

        with self._lock:
            node = self.nodes[instance_id]
            if node.dead:
                return
            node.dead = True
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run(["/bin/sh", "-c", stop_script()], env={**env, "HOME": str(node.home)}, timeout=30, check=True)
        stop_watchdog(node)

        async def close() -> None:
            node.acceptor.close()
            await node.acceptor.wait_closed()
        self.loop.call(close())

    # ---------------------------------------------------------------- the hypervisor: EC2's side of an instance
    def start_hypervisor(self, poll_s: float = 1.0) -> None:
        """Boot instances as moto runs them, answer their ``shutdown``, stop the nodes of terminated ones."""
        def loop() -> None:
            ec2 = boto_client(self.moto_url)
            while not self._halt.wait(poll_s):
                try:
                    self._look(ec2)
                except Exception as exc:  # noqa: BLE001 - a moto hiccup: look again next time
                    print(f"fake hypervisor: {type(exc).__name__}: {exc}")
        self._hypervisor = threading.Thread(target=loop, name="fake-hypervisor", daemon=True)
        self._hypervisor.start()

    def _look(self, ec2: Any) -> None:
        reply = ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["shield:cluster"]}])
        for inst in (i for r in reply["Reservations"] for i in r["Instances"]):
            instance_id, state = inst["InstanceId"], inst["State"]["Name"]
            node = self.nodes.get(instance_id)
            if state == "running" and instance_id not in self.booted:
                self.boot(instance_id)
            elif state in ("terminated", "shutting-down", "stopped") and node is not None and not node.dead:
                self.kill(instance_id)
            node = self.nodes.get(instance_id)
            if node is not None and not node.dead and (node.rootfs / "shutdown-requested").exists():
                self._shutdown(ec2, instance_id)

    def boot(self, instance_id: str) -> None:
        """Run the instance's cloud-init ``bootcmd`` (as root, as cloud-init does), then start its SSH server."""
        import yaml

        with self._lock:
            self.booted[instance_id] = time.time()
            text = self.user_data(instance_id)
            if "ed25519_private" not in text:
                return  # not launched by shield-ops: nothing to boot
            node = self.nodes.get(instance_id) or self.add_node(instance_id, self.pinned_host_key(text))
        node.rootfs.mkdir(parents=True, exist_ok=True)
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HOME": str(node.rootfs),
               "SHIELD_ROOTFS": str(node.rootfs), "SHIELD_NODE_HOME": str(node.home),
               "PATH": f"{fake_bin(self.root)}:{os.environ['PATH']}"}
        for command in (yaml.safe_load(text) or {}).get("bootcmd") or []:
            argv = ["/bin/sh", "-c", command] if isinstance(command, str) else [str(a) for a in command]
            done = subprocess.run(argv, env=env, cwd=node.rootfs, timeout=60, check=False, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True)
            with (node.rootfs / "boot.log").open("a") as log:  # what a console would show
                log.write(done.stdout + done.stderr)

    def _shutdown(self, ec2: Any, instance_id: str) -> None:
        reply = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior")
        behaviour = reply["InstanceInitiatedShutdownBehavior"]["Value"]
        if behaviour == "terminate":
            ec2.terminate_instances(InstanceIds=[instance_id])
        else:
            ec2.stop_instances(InstanceIds=[instance_id])
        self.shutdowns.append((instance_id, behaviour, time.time()))
        self.kill(instance_id)

    def stop(self) -> None:
        self._halt.set()
        if self._hypervisor is not None:
            self._hypervisor.join(30)

        async def close() -> None:
            for node in self.nodes.values():
                node.acceptor.close()
                await node.acceptor.wait_closed()
        for node in self.nodes.values():
            stop_watchdog(node)
        self.loop.call(close())
        self.loop.stop()


def fake_bin(root: Path) -> Path:
    """Commands a fake node's boot sees first on its PATH: ``shutdown``/``poweroff`` ask the hypervisor (by a file in
    the node's root), ``systemd-run`` is absent (the watchdog then runs detached, as on a host without systemd)."""
    path = root / "fake-bin"
    if not path.exists():
        path.mkdir(parents=True)
        for name in ("shutdown", "poweroff"):
            (path / name).write_text('#!/bin/sh\necho "$0 $*" > "$SHIELD_ROOTFS/shutdown-requested"\n')
        (path / "systemd-run").write_text("#!/bin/sh\necho 'no systemd on a fake node' >&2\nexit 1\n")
        for tool in path.iterdir():
            tool.chmod(0o755)
    return path


def stop_watchdog(node: FakeNode) -> None:
    """Stop the node's boot watchdog (by the pid it wrote), as the instance's end would."""
    try:
        pid = int((node.rootfs / "var/lib/shield/watchdog.pid").read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass


# ------------------------------------------------------------------------------------------- self-tests
def test_fake_node_runs_real_commands_in_its_home(tmp_path: Path) -> None:
    cloud = FakeCloud(tmp_path / "nodes", "http://127.0.0.1:9")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    cloud.state_dir = tmp_path
    (tmp_path / "id_ed25519.pub").write_bytes(client_key.export_public_key())
    node = cloud.add_node("i-0123456789abcdef0", host_key)

    async def go() -> tuple[str, bytes]:
        async with asyncssh.connect("127.0.0.1", node.port, username="ubuntu", client_keys=[client_key],
                                    known_hosts=([host_key.convert_to_public()], [], []), config=None,
                                    agent_path=None) as conn:
            result = await conn.run("echo hi > f && pwd && echo $HOME", check=True)
            async with conn.start_sftp_client() as sftp:
                async with sftp.open("f", "rb") as handle:
                    data = await handle.read()
            return str(result.stdout), data
    try:
        out, data = asyncio.run(go())
    finally:
        cloud.stop()
    assert out.split() == [str(node.home), str(node.home)]
    assert data == b"hi\n"
    assert node.peers and node.peers[0][0] == "127.0.0.1"


def test_fake_node_refuses_other_client_keys(tmp_path: Path) -> None:
    cloud = FakeCloud(tmp_path / "nodes", "http://127.0.0.1:9")
    cloud.state_dir = tmp_path
    (tmp_path / "id_ed25519.pub").write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_public_key())
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    node = cloud.add_node("i-0123456789abcdef1", host_key)

    async def go() -> None:
        await asyncssh.connect("127.0.0.1", node.port, username="ubuntu",
                               client_keys=[asyncssh.generate_private_key("ssh-ed25519")],
                               known_hosts=([host_key.convert_to_public()], [], []), config=None, agent_path=None)
    try:
        with pytest.raises(asyncssh.PermissionDenied):
            asyncio.run(go())
    finally:
        cloud.stop()
