"""Nodes of a cluster as discovered from EC2 tags, their life-cycle states, and the address resolver hook."""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class NodeState(str, enum.Enum):
    """Where a node is on its way up (the UI shows these); values are what users and scripts see."""

    PLANNED = "planned"
    PENDING = "pending"
    RUNNING = "running"
    SSH_READY = "ssh-ready"
    DEPLOYED = "deployed"
    STARTED = "started"
    STOPPED = "stopped"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"


#: set by ``up --watch`` on an instance whose agent reported a spot interruption notice (value: the notice's time)
SPOT_NOTICE_TAG = "shield:spot-notice"


@dataclass
class Node:
    """One instance of the cluster, identified by its ``shield:node`` tag (``ps``, ``agent-0``, ...)."""

    name: str
    role: str
    instance_id: str
    instance_type: str
    zone: str
    ec2_state: str
    public_ip: str | None
    private_ip: str | None
    launch_time: datetime | None
    transition_reason: str | None = None
    incarnation: str | None = None
    spot_notice: str | None = None  # the ``shield:spot-notice`` tag: the time EC2 will reclaim it; being replaced

    @classmethod
    def from_ec2(cls, inst: dict[str, Any]) -> Node:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        return cls(
            name=tags.get("shield:node", inst["InstanceId"]), role=tags.get("shield:role", "?"),
            instance_id=inst["InstanceId"], instance_type=inst.get("InstanceType", "?"),
            zone=inst.get("Placement", {}).get("AvailabilityZone", "?"), ec2_state=inst["State"]["Name"],
            public_ip=inst.get("PublicIpAddress"), private_ip=inst.get("PrivateIpAddress"),
            launch_time=inst.get("LaunchTime"), transition_reason=inst.get("StateTransitionReason") or None,
            incarnation=tags.get("shield:incarnation"), spot_notice=tags.get(SPOT_NOTICE_TAG),
        )


@dataclass(frozen=True)
class Endpoint:
    """How to reach a node: SSH at (host, port), and the address other nodes use for it (``cluster_host``)."""

    host: str
    port: int
    cluster_host: str


Resolver = Callable[[Node], Endpoint]


ENDPOINT_MODES = ("public", "private", "bastion")
_mode = "public"


def default_resolver(node: Node) -> Endpoint:
    """SSH to the public IP (``public``), or to the private IP (``private``: from inside the VPC or over a VPN;
    ``bastion``: through the jump host); port 22. Nodes talk to each other over private IPs."""
    host = node.public_ip or node.private_ip if _mode == "public" else node.private_ip
    if host is None:
        raise LookupError(f"{node.name} ({node.instance_id}) has no {'' if _mode == 'public' else 'private '}"
                          "IP address yet")
    return Endpoint(host, 22, node.private_ip or host)


def set_endpoint_mode(mode: str) -> None:
    """How :func:`default_resolver` reaches nodes: ``nodes.ssh_endpoint`` of the config."""
    global _mode
    if mode not in ENDPOINT_MODES:
        raise ValueError(f"ssh endpoint mode {mode!r} is not one of {', '.join(ENDPOINT_MODES)}")
    _mode = mode


_resolver: Resolver = default_resolver


def set_resolver(resolver: Resolver | None) -> None:
    """Replace how nodes are reached (tests map instance ids to loopback servers); ``None`` restores the default."""
    global _resolver
    _resolver = resolver or default_resolver


def resolve(node: Node) -> Endpoint:
    """The endpoint of ``node`` under the current resolver; every SSH connection goes through this."""
    return _resolver(node)


def sort_key(name: str) -> tuple[int, int]:
    """Order ``ps`` first, then agents by index."""
    if name == "ps":
        return (0, 0)
    head, _, index = name.rpartition("-")
    return (1, int(index)) if index.isdigit() else (2, 0)
