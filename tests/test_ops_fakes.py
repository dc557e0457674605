"""Offline stand-ins for the cloud, shared by the shield-ops tests: moto's EC2 server, SSH nodes, a fake IMDS.

* moto runs in server mode on 127.0.0.1 and is reached through aiobotocore by ``AWS_ENDPOINT_URL_EC2``.
* Each fake node is a real asyncssh server on 127.0.0.1:0 (one loop on a background thread for all of them, so the
  CLI's own ``asyncio.run`` works) running real shell commands in its own home directory, with SFTP chrooted there.
  A node is created the first time shield-ops resolves an instance id: its host key is the one shield-ops pinned in
  that instance's cloud-init user data (read back from moto), and it accepts only the cluster's client key.

The tests at the bottom check the fakes themselves.
"""
from __future__ import annotations

import asyncio
import base64
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

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
        import subprocess

        from shield_ops.deploy import stop_script

        node = self.nodes[instance_id]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        subprocess.run(["/bin/sh", "-c", stop_script()], env={**env, "HOME": str(node.home)}, timeout=30, check=True)

        async def close() -> None:
            node.acceptor.close()
            await node.acceptor.wait_closed()
        self.loop.call(close())

    def stop(self) -> None:
        async def close() -> None:
            for node in self.nodes.values():
                node.acceptor.close()
                await node.acceptor.wait_closed()
        self.loop.call(close())
        self.loop.stop()


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
