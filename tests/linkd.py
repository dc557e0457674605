"""Delay and jitter for the fleet bed's links where the kernel has no ``sch_netem`` (tests/fleet_bed.py).

The packets stay in the kernel: an iptables rule in each node's network namespace (``raw PREROUTING -j NFQUEUE``)
hands every packet arriving at that node to a netfilter queue, and this process, holding one ``NETLINK_NETFILTER``
socket per namespace, sees only each packet's id (copy mode META, GSO packets whole) and gives the kernel its ACCEPT
verdict once the packet's delay has passed. So both TCP stacks are the kernel's; what is emulated is the time a
packet spends on the wire. Each packet's release time is ``arrival + delay + U(-jitter, +jitter)``, never before the
previous packet's (no reordering, as netem does with a rate), and a batch verdict releases every packet due at once.
Loss and partitions are iptables rules (``-m statistic``, ``-j DROP``) and rates ``tc tbf``: see tests/fleet_bed.py.

Run by the bed as ``python -m tests.linkd`` (root): it reads JSON lines on stdin, ``{"ns": NAME, "queue": N,
"delay": S, "jitter": S}`` to (re)configure a namespace's queue, ``{"stats": true}`` to print a JSON line of counters,
and exits when stdin closes. This is the Linux nfnetlink_queue protocol (linux/netfilter/nfnetlink_queue.h).
"""
from __future__ import annotations

import collections
import ctypes
import json
import os
import random
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 2, 3
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_GSO = 4
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR, NLMSG_DONE = 2, 3
CLONE_NEWNET = 0x40000000
#: Packets a queue may hold (1 Gbit/s x 100 ms is ~12,000 packets of 1,500 bytes).
QUEUE_MAXLEN = 65536


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _message(msg: int, queue: int, attrs: bytes, flags: int = NLM_F_REQUEST, seq: int = 0) -> bytes:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, flags, seq, 0) + body


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


def open_queue_socket(ns: str | None, queue: int) -> socket.socket:
    """A netlink socket bound to netfilter queue ``queue`` in network namespace ``ns`` (None: ours)."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        if ns is not None:
            target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    finally:
        _setns(home)
        os.close(home)
    sock.bind((0, 0))
    sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: bursts of packet messages
    config = (_attr(NFQA_CFG_CMD, struct.pack("=BxH", NFQNL_CFG_CMD_BIND, 0))
              + _attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
              + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", QUEUE_MAXLEN))
              + _attr(NFQA_CFG_FLAGS, struct.pack(">I", NFQA_CFG_F_GSO))
              + _attr(NFQA_CFG_MASK, struct.pack(">I", NFQA_CFG_F_GSO)))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, config, NLM_F_REQUEST | NLM_F_ACK, seq=1))
    reply = sock.recv(65536)
    _, kind = struct.unpack_from("=IH", reply)
    if kind == NLMSG_ERROR:
        (error,) = struct.unpack_from("=i", reply, 16)
        if error != 0:
            sock.close()
            raise OSError(-error, f"binding netfilter queue {queue} in {ns}: {os.strerror(-error)}")
    sock.setblocking(False)
    return sock


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQNL_MSG_PACKET messages in one netlink read."""
    ids = []
    offset, end = 0, len(data)
    while offset + 16 <= end:
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            attr = offset + 20
            while attr + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, attr)
                if alen < 4:
                    break
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    ids.append(struct.unpack_from(">I", data, attr + 4)[0])
                    break
                attr += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return ids


@dataclass
class Queue:
    """One namespace's queue: packets waiting for their release time, in arrival order."""

    ns: str
    queue: int
    sock: socket.socket
    delay: float = 0.0
    jitter: float = 0.0
    waiting: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    last_release: float = 0.0
    packets: int = 0
    late_max: float = 0.0  # the most a verdict went out after its release time (the emulator's own lag)

    def arrived(self, ids: list[int], now: float) -> None:
        for packet in ids:
            wobble = random.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
            release = max(now + max(0.0, self.delay + wobble), self.last_release)
            self.last_release = release
            self.waiting.append((release, packet))
        self.packets += len(ids)

    def release_due(self, now: float) -> None:
        last = None
        while self.waiting and self.waiting[0][0] <= now:
            due, last = self.waiting.popleft()
            self.late_max = max(self.late_max, now - due)
        if last is not None:
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, last))
            self.sock.send(_message(NFQNL_MSG_VERDICT_BATCH, self.queue, verdict))


def serve(stdin: int = 0) -> None:
    queues: dict[str, Queue] = {}
    selector = selectors.DefaultSelector()
    selector.register(stdin, selectors.EVENT_READ, None)
    pending = b""
    while True:
        now = time.monotonic()
        heads = [q.waiting[0][0] for q in queues.values() if q.waiting]
        timeout = max(0.0, min(heads) - now) if heads else None
        for key, _ in selector.select(timeout):
            if key.data is None:
                chunk = os.read(stdin, 65536)
                if not chunk:
                    for q in queues.values():
                        q.sock.close()
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.strip():
                        _command(json.loads(line), queues, selector)
                continue
            q = key.data
            now = time.monotonic()
            while True:
                try:
                    data = q.sock.recv(1 << 20)
                except BlockingIOError:
                    break
                except OSError as exc:  # ENOBUFS: the kernel dropped messages; their packets time out as lost
                    print(json.dumps({"warning": f"{q.ns}: {exc}"}), file=sys.stderr, flush=True)
                    continue
                q.arrived(packet_ids(data), now)
        now = time.monotonic()
        for q in queues.values():
            q.release_due(now)


def _command(cmd: dict, queues: dict[str, Queue], selector: selectors.BaseSelector) -> None:
    if cmd.get("stats"):
        print(json.dumps({q.ns: {"packets": q.packets, "waiting": len(q.waiting), "late_max": round(q.late_max, 6)}
                          for q in queues.values()}), flush=True)
        return
    ns = cmd["ns"]
    q = queues.get(ns)
    if q is None:
        sock = open_queue_socket(ns, int(cmd.get("queue", 0)))
        q = queues[ns] = Queue(ns, int(cmd.get("queue", 0)), sock)
        selector.register(sock, selectors.EVENT_READ, q)
    q.delay, q.jitter = float(cmd.get("delay", 0.0)), float(cmd.get("jitter", 0.0))
    print(json.dumps({"ok": ns}), flush=True)


if __name__ == "__main__":
    serve()
