"""A fleet in a box (issue 22): the PS and the agents in network namespaces of their own, joined through a bridge,
each behind a link of its own with a rate, a delay, a jitter and a loss.

Topology: one Linux bridge in the root namespace; per node a namespace ``<prefix>-<name>`` whose ``eth0`` (a veth
into the bridge) has the node's address in ``10.<a>.<b>.0/24``. What shapes a node's link, per direction:

- rate: ``tc tbf`` on the node's ``eth0`` (what it sends: its uplink) and on the bridge side of its veth (what it
  receives: its downlink). Real kernel shaping.
- delay and jitter: where the kernel has ``sch_netem`` it is used on the bridge side of the veth; where it has not
  (this project's machines: no netem, fq or fq_codel), an iptables rule in the node's namespace (``raw PREROUTING -j
  NFQUEUE``) hands each arriving packet to :mod:`tests.linkd`, which returns it to the kernel once its delay has
  passed. The packet never leaves the kernel; only its release time is decided in user space.
- loss: ``-m statistic --mode random`` DROP on arrival (per packet: the bed then caps GSO at one MTU so that a
  "packet" is one frame on the wire, 9000 bytes as inside an EC2 VPC).
- partitions and unreachable pairs (agents behind NAT): DROP on arrival of everything from the cut addresses.

So the delay, jitter and loss of a link are those of packets *arriving at* its node: a path A -> B sees B's delay
and loss, and an RTT between A and B is A's delay + B's delay. Both TCP stacks are the kernel's (congestion control
cubic, as on stock Linux fleets; kernel-default socket buffers).

Every namespace, link and process the bed makes is named after this process's id and removed by :meth:`FleetBed.
close` (processes stopped by PID); namespaces left by a bed whose process died are removed at the next bed's start.
Needs root, ``ip``, ``tc`` and (for delay without netem, loss, partitions) ``iptables``: :func:`unavailable` says
what is missing.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Frames inside the bed (EC2 VPCs carry 9001-byte frames).
MTU = 9000
_PREFIX = "fleet"


@dataclass(frozen=True)
class Link:
    """A node's link to the bridge. ``rate``/``up``/``down``: tc rates (``"1gbit"``; None: unshaped), ``up`` what the
    node sends, ``down`` what it receives (each defaults to ``rate``); ``delay``, ``jitter``: seconds added to each
    packet arriving at the node; ``loss``: the fraction of arriving packets dropped."""

    rate: str | None = None
    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    up: str | None = None
    down: str | None = None

    def describe(self) -> str:
        rates = self.rate or "unshaped"
        if self.up or self.down:
            rates = f"up {self.up or self.rate or 'unshaped'}, down {self.down or self.rate or 'unshaped'}"
        extra = [f"+{self.delay * 1e3:g} ms" if self.delay else "", f"±{self.jitter * 1e3:g} ms" if self.jitter else "",
                 f"{self.loss * 100:g}% loss" if self.loss else ""]
        return " ".join([rates, *[e for e in extra if e]])


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


def unavailable() -> str | None:
    """Why this machine cannot run the bed (None: it can)."""
    if sys.platform != "linux":
        return "the fleet bed needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the fleet bed needs root (network namespaces, tc, iptables)"
    for tool in ("ip", "tc", "iptables"):
        if shutil.which(tool) is None:
            return f"the fleet bed needs `{tool}` (apt-get install iproute2 iptables)"
    probe = f"{_PREFIX}probe{os.getpid()}"
    result = _run("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create a network namespace: {result.stderr.strip()}"
    try:
        rule = _run("ip", "netns", "exec", probe, "iptables", "-t", "raw", "-A", "PREROUTING", "-j", "NFQUEUE",
                    "--queue-num", "0", "--queue-bypass", check=False)
        if rule.returncode != 0:
            return f"iptables cannot queue packets to user space here: {rule.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


def has_netem() -> bool:
    """True when the kernel has sch_netem (then delay and jitter are netem's)."""
    probe = f"{_PREFIX}nm{os.getpid()}"
    if _run("ip", "link", "add", probe, "type", "dummy", check=False).returncode != 0:
        return False
    try:
        return _run("tc", "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms", check=False).returncode == 0
    finally:
        _run("ip", "link", "del", probe, check=False)


def _sweep_stale() -> None:
    """Remove namespaces and bridges of beds whose process is gone (ours only: they carry our prefix and a pid)."""
    names = _run("ip", "netns", "list", check=False).stdout.split()
    for name in names:
        match = re.fullmatch(rf"{_PREFIX}(\d+)-[a-z0-9]+", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():  # what it left running there
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run("ip", "netns", "del", name, check=False)
            shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
    for line in _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        match = re.search(r": (fb(\d+)):", line)
        if match and not Path(f"/proc/{match.group(2)}").exists():
            _run("ip", "link", "del", match.group(1), check=False)


@dataclass
class Node:
    """One namespace of the bed: its name, address and link."""

    name: str
    ns: str
    address: str
    index: int
    link: Link
    veth: str  # the bridge side of its veth
    cut_from: set[str] = field(default_factory=set)  # addresses whose packets it drops
    isolated: bool = False

    def command(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside this node's namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]


class FleetBed:
    """Namespaces on a bridge; see the module docstring. Use as a context manager or call :meth:`close`."""

    def __init__(self, netem: bool | None = None) -> None:
        _sweep_stale()
        pid = os.getpid()
        self.tag = f"{pid}"
        self.bridge = f"fb{pid}"
        self.subnet = f"10.{200 + pid % 50}.{(pid // 50) % 250}"
        self.netem = has_netem() if netem is None else netem
        self.nodes: dict[str, Node] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[object] = []
        self._linkd: subprocess.Popen[bytes] | None = None
        self._hosts: dict[str, str] = {}
        self._queued: set[str] = set()  # namespaces with a delay queue in the daemon
        self._closed = False
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "link", "set", self.bridge, "mtu", str(MTU), "up")

    def __enter__(self) -> FleetBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- nodes and links --------------------------------------------------------------------------------------
    def add(self, name: str, link: Link = Link()) -> Node:
        """A new namespace ``name`` with the next free address, behind ``link``."""
        if not re.fullmatch(r"[a-z0-9]{1,8}", name) or name in self.nodes:
            raise ValueError(f"bad or duplicate node name {name!r}")
        index = len(self.nodes) + 1
        node = Node(name, f"{_PREFIX}{self.tag}-{name}", f"{self.subnet}.{index}", index, link,
                    f"fb{self.tag}v{index}")
        self.nodes[name] = node
        _run("ip", "netns", "add", node.ns)
        _run("ip", "link", "add", node.veth, "mtu", str(MTU), "type", "veth", "peer", "name", "eth0", "netns", node.ns)
        _run("ip", "link", "set", node.veth, "master", self.bridge, "up")
        self._ns(node, "ip", "link", "set", "lo", "up")
        self._ns(node, "ip", "addr", "add", f"{node.address}/24", "dev", "eth0")
        self._ns(node, "ip", "link", "set", "eth0", "mtu", str(MTU), "up")
        # stock Linux congestion control (this kernel defaults new namespaces to bbr and allows only bbr and reno)
        self._ns(node, "ip", "route", "replace", f"{self.subnet}.0/24", "dev", "eth0", "congctl", "cubic")
        self._ns(node, "iptables", "-t", "raw", "-N", "BED")
        self._ns(node, "iptables", "-t", "raw", "-A", "PREROUTING", "-i", "eth0", "-j", "BED")
        self.shape(node, link)
        self._write_hosts()
        return node

    def shape(self, node: Node, link: Link) -> None:
        """Give ``node`` the link ``link`` (now, under live traffic too)."""
        node.link = link
        for runner, dev, rate in ((self._ns_runner(node), "eth0", link.up or link.rate),
                                  (_run, node.veth, link.down or link.rate)):
            runner("tc", "qdisc", "del", "dev", dev, "root", check=False)
            if self.netem and dev == node.veth and (link.delay or link.jitter or rate):
                netem = ["netem", "delay", f"{link.delay * 1e3:.3f}ms"]
                if link.jitter:
                    netem += [f"{link.jitter * 1e3:.3f}ms"]
                if rate:
                    netem += ["rate", rate]
                runner("tc", "qdisc", "add", "dev", dev, "root", *netem, "limit", "100000")
            elif rate:
                runner("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", _burst(rate),
                       "latency", "200ms")
        gso = str(MTU) if any(n.link.loss for n in self.nodes.values()) else "65536"
        for other in self.nodes.values():  # per-packet loss: a GSO packet of 64 KiB would be 7 frames lost at once
            self._ns(other, "ip", "link", "set", "eth0", "gso_max_size", gso)
        if not self.netem and (link.delay or link.jitter):
            self._linkd_command({"ns": node.ns, "queue": 0, "delay": link.delay, "jitter": link.jitter})
        elif not self.netem and self._linkd is not None and node.ns in self._queued:
            self._linkd_command({"ns": node.ns, "queue": 0, "delay": 0.0, "jitter": 0.0})
        self._rules(node)

    def partition(self, node: Node, cut: bool = True) -> None:
        """Cut ``node`` off from every other node (both ways, packets silently lost), or heal it."""
        node.isolated = cut
        for other in self.nodes.values():
            if other is not node:
                (other.cut_from.add if cut else other.cut_from.discard)(node.address)
                self._rules(other)
        self._rules(node)

    def block(self, sources: Sequence[Node], dest: Node) -> None:
        """``dest`` drops everything from ``sources`` (connections to it from them time out, as behind NAT)."""
        dest.cut_from.update(n.address for n in sources)
        self._rules(dest)

    def _rules(self, node: Node) -> None:
        """Rebuild the node's arrival chain: partition, cut sources, loss, then the delay queue."""
        ns = self._ns
        ns(node, "iptables", "-t", "raw", "-F", "BED")
        if node.isolated:
            ns(node, "iptables", "-t", "raw", "-A", "BED", "-j", "DROP")
        for source in sorted(node.cut_from):
            ns(node, "iptables", "-t", "raw", "-A", "BED", "-s", source, "-j", "DROP")
        if node.link.loss:
            ns(node, "iptables", "-t", "raw", "-A", "BED", "-m", "statistic", "--mode", "random", "--probability",
               f"{node.link.loss:.6f}", "-j", "DROP")
        if not self.netem and (node.link.delay or node.link.jitter):
            ns(node, "iptables", "-t", "raw", "-A", "BED", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass")

    # ---- names ------------------------------------------------------------------------------------------------
    def name(self, hostname: str, node: Node) -> None:
        """Every node resolves ``hostname`` to ``node``'s address from now on (each namespace's /etc/hosts, which
        ``ip netns exec`` mounts over /etc/hosts; rewritten in place so that running processes see it)."""
        self._hosts[hostname] = node.address
        self._write_hosts()

    def _write_hosts(self) -> None:
        text = "127.0.0.1 localhost\n" + "".join(f"{a} {h}\n" for h, a in self._hosts.items())
        for other in self.nodes.values():
            path = Path(f"/etc/netns/{other.ns}/hosts")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a+") as f:  # in place: the bind mount of a running process follows the inode
                f.seek(0)
                f.truncate()
                f.write(text)

    # ---- processes --------------------------------------------------------------------------------------------
    def start(self, node: Node, cmd: Sequence[str], log_path: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Run ``cmd`` in ``node``'s namespace (``ip netns exec`` execs it: the PID is the command's own); stopped by
        PID at :meth:`close` or :meth:`stop`."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "wb")
        self._logs.append(log)
        proc = subprocess.Popen(node.command(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, start_new_session=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Stop one process by its PID (SIGKILL if it outlives ``timeout``)."""
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)

    # ---- the delay daemon -------------------------------------------------------------------------------------
    def _linkd_command(self, command: dict[str, object]) -> None:
        if self._linkd is None:
            self._linkd_log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"linkd-{self.tag}.log", "wb")
            self._linkd = subprocess.Popen([sys.executable, "-m", "tests.linkd"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=self._linkd_log,
                                           env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
        assert self._linkd.stdin is not None and self._linkd.stdout is not None
        self._linkd.stdin.write(json.dumps(command).encode() + b"\n")
        self._linkd.stdin.flush()
        self._linkd_answer()
        self._queued.add(str(command["ns"]))

    def _linkd_answer(self, timeout: float = 30.0) -> bytes:
        """The daemon's next line (it answers every command at once; a silent daemon fails the bed, never hangs it)."""
        assert self._linkd is not None and self._linkd.stdout is not None
        if not select.select([self._linkd.stdout], [], [], timeout)[0]:
            raise RuntimeError(f"the link delay daemon (tests/linkd.py) did not answer in {timeout:.0f}s")
        answer = self._linkd.stdout.readline()
        if not answer:
            raise RuntimeError("the link delay daemon (tests/linkd.py) exited")
        return answer

    def linkd_stats(self) -> dict[str, dict[str, float]]:
        """Per namespace: packets delayed, waiting now, and the most a release was late (the emulator's lag)."""
        if self._linkd is None:
            return {}
        assert self._linkd.stdin is not None and self._linkd.stdout is not None
        self._linkd.stdin.write(b'{"stats": true}\n')
        self._linkd.stdin.flush()
        return json.loads(self._linkd_answer())

    # ---- teardown ---------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every process (by PID), the delay daemon, delete every namespace and the bridge. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.terminate()
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._linkd is not None:
            assert self._linkd.stdin is not None
            self._linkd.stdin.close()
            try:
                self._linkd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._linkd.kill()
                self._linkd.wait(timeout=10)
            self._linkd_log.close()
        for log in self._logs:
            log.close()  # type: ignore[attr-defined]
        for node in self.nodes.values():
            _run("ip", "link", "del", node.veth, check=False)
            _run("ip", "netns", "del", node.ns, check=False)
            shutil.rmtree(f"/etc/netns/{node.ns}", ignore_errors=True)
        _run("ip", "link", "del", self.bridge, check=False)

    # ---- helpers ----------------------------------------------------------------------------------------------
    def _ns(self, node: Node, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", node.ns, *cmd, check=check)

    def _ns_runner(self, node: Node):  # type: ignore[no-untyped-def]
        return lambda *cmd, check=True: self._ns(node, *cmd, check=check)


def _burst(rate: str) -> str:
    """A tbf bucket of ~2 ms at the rate, at least a few jumbo frames (what a NIC's queue lets through at once)."""
    bits = _bits(rate)
    return f"{max(64 * 1024, int(bits / 8 * 0.002))}b"


def _bits(rate: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate.lower())
    if not match:
        raise ValueError(f"rate {rate!r}: expected e.g. 100mbit, 1gbit")
    return float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2)]


def rate_bytes(rate: str) -> float:
    """Bytes per second of a tc rate (``"1gbit"`` -> 1.25e8)."""
    return _bits(rate) / 8


__all__ = ["FleetBed", "Link", "Node", "has_netem", "rate_bytes", "replace", "unavailable"]
