"""The cloud seam: the verbs shield-ops asks of a cloud, as one protocol (EC2 implements it, :mod:`shield_ops.ec2`).

Callers (``up``, ``down``, ``status``, the watch, the supervisor) receive a :class:`Cloud` and never a raw SDK client;
one implementation owns one client for its whole use (``async with EC2.open(region) as cloud``). Discovery and
deletion go by the cluster's tags only, in the manner of Ray's autoscaler node provider.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from shield_ops.nodes import Node


class Tagged(Protocol):
    """Anything naming one cluster by its tags (a :class:`~shield_ops.config.ClusterConfig`, the supervisor's
    config): ``{"shield:cluster": NAME}``."""

    @property
    def tags(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class LaunchSpec:
    """What one node is launched with (same AMI, key and group for all; type and zone come from the retry loop)."""

    node: str
    role: str
    instance_types: tuple[str, ...]
    user_data: str


class Cloud(Protocol):
    """What shield-ops needs from a cloud provider. ``cfg`` is a :class:`~shield_ops.config.ClusterConfig` where the
    verb needs more than the cluster's tags."""

    # ---------------------------------------------------------------- who we are
    async def credentials_source(self) -> str | None:
        """Where the credentials come from (``env``, ``shared-credentials-file``, ``iam-role``, ...), or None."""
        ...

    # ---------------------------------------------------------------- discovery (by tag)
    async def find_instances(self, cluster: Tagged, include_gone: bool = False) -> list[Node]: ...

    async def describe(self, instance_ids: list[str]) -> list[Node]: ...

    async def incarnations(self, cluster: Tagged) -> set[str]:
        """The ids of the cluster's current life (lives): its tagged security groups."""
        ...

    async def security_groups(self, cluster: Tagged) -> list[dict[str, Any]]: ...

    async def key_pairs(self, cluster: Tagged) -> list[dict[str, Any]]: ...

    async def find_key_pair(self, cfg: Any) -> dict[str, Any] | None: ...

    async def find_security_group(self, cfg: Any, vpc_id: str) -> dict[str, Any] | None: ...

    async def resolve_vpc(self, cfg: Any) -> str: ...

    async def subnets_by_zone(self, cfg: Any, vpc_id: str) -> dict[str, str]: ...

    async def user_data(self, instance_id: str) -> str: ...

    async def console_output(self, instance_id: str) -> str: ...

    async def spot_prices(self, instance_types: set[str]) -> dict[tuple[str, str], float]: ...

    # ---------------------------------------------------------------- creation and change
    async def import_key_pair(self, cfg: Any, public_key: bytes) -> None: ...

    async def ensure_security_group(self, cfg: Any, vpc_id: str, cidr: str) -> tuple[str, bool]: ...

    async def launch(self, cfg: Any, spec: LaunchSpec, subnets: dict[str, str], group_id: str,
                     on_retry: Callable[[str], None] = ...) -> Node: ...

    async def wait_running(self, instance_ids: list[str], timeout_s: float = 600) -> None: ...

    async def wait_terminated(self, instance_ids: list[str], timeout_s: float = 600) -> None: ...

    async def tag_spot_notice(self, cluster: Tagged, notices: dict[str, str]) -> None: ...

    async def tag_life(self, cluster: Tagged, group_id: str, tags: dict[str, str]) -> None:
        """Tag one life of the cluster (its security group, which outlives its instances until ``down``)."""
        ...

    # ---------------------------------------------------------------- deletion
    async def terminate(self, cluster: Tagged, nodes: list[Node]) -> None: ...

    async def delete_security_group(self, group_id: str, attempts: int = 30) -> None: ...

    async def delete_key_pair(self, key: dict[str, Any]) -> None: ...
