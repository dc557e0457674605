"""EC2 through aiobotocore: the :class:`~shield_ops.cloud.Cloud` of shield-ops.

:class:`EC2` owns one aiobotocore client for as long as its caller holds it (``async with EC2.open(region) as
cloud``). The endpoint follows botocore's standard resolution (``AWS_ENDPOINT_URL_EC2`` / ``AWS_ENDPOINT_URL``), so
LocalStack or moto need no flag of ours. Every resource we create carries ``shield:cluster=NAME``; discovery and
deletion go by that tag only (never by key name or group name), in the manner of Ray's autoscaler node provider. The
pure helpers (request parameters, rules, prices) are module functions.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from shield_ops.cloud import LaunchSpec, Tagged
from shield_ops.config import ClusterConfig
from shield_ops.errors import CapacityError, ProvisionError
from shield_ops.nodes import SPOT_NOTICE_TAG, Node

__all__ = ["EC2", "LaunchSpec", "hourly_price", "of_incarnation", "tag_filters"]

log = logging.getLogger(__name__)

#: capacity errors worth retrying in another (instance type, zone) pool.
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity", "SpotMaxPriceTooLow",
    "Unsupported", "InsufficientFreeAddressesInSubnet",
})
#: instances launched into one life of the cluster (its security group, created by ``up``, deleted by ``down``) carry
#: that group's id: a cluster downed and brought up again under the same name does not inherit the old one's bill.
INCARNATION_TAG = "shield:incarnation"
LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
WAITER_DELAY_S = 5


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tag_filters(cluster: Tagged) -> list[dict[str, Any]]:
    """Filters matching ``cluster.tags`` (a :class:`ClusterConfig`, or anything with the same ``tags``)."""
    return [{"Name": f"tag:{k}", "Values": [v]} for k, v in cluster.tags.items()]


def cluster_name(cluster: Tagged) -> str:
    return cluster.tags.get("shield:cluster", "?")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _refused(action: str, exc: ClientError) -> ProvisionError:
    err = exc.response.get("Error", {})
    return ProvisionError(f"EC2 refused {action}: {err.get('Code')}: {err.get('Message')}")


def of_incarnation(nodes: list[Node], current: set[str]) -> list[Node]:
    """The instances of the cluster's current life: launched into one of ``current``, or live and untagged (launched
    by an older shield-ops). With no current group (after ``down``) every instance counts."""
    if not current:
        return nodes
    return [n for n in nodes if n.incarnation in current or (n.incarnation is None and n.ec2_state != "terminated")]


def ingress_rules(cfg: ClusterConfig, group_id: str, cidr: str) -> list[dict[str, Any]]:
    """All traffic inside the cluster (self-referencing rule); SSH and the PS port only from the operator."""
    return [
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id, "Description": "intra-cluster"}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": cidr, "Description": "shield-ops operator ssh"}]},
        {"IpProtocol": "tcp", "FromPort": cfg.ps_port, "ToPort": cfg.ps_port,
         "IpRanges": [{"CidrIp": cidr, "Description": "shield-ps watch"}]},
    ]


def _has_rule(group: dict[str, Any], rule: dict[str, Any]) -> bool:
    for perm in group.get("IpPermissions", []):
        if perm.get("IpProtocol") != rule["IpProtocol"] or perm.get("FromPort") != rule.get("FromPort"):
            continue
        if "UserIdGroupPairs" in rule:
            wanted = rule["UserIdGroupPairs"][0]["GroupId"]
            if any(p.get("GroupId") == wanted for p in perm.get("UserIdGroupPairs", [])):
                return True
        elif any(r.get("CidrIp") == rule["IpRanges"][0]["CidrIp"] for r in perm.get("IpRanges", [])):
            return True
    return False


OUR_DESCRIPTIONS = ("shield-ops operator ssh", "shield-ps watch")


def stale_rules(group: dict[str, Any], wanted: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Operator rules we added earlier that the config no longer asks for (another address, another PS port)."""
    keep = {(r["FromPort"], r["IpRanges"][0]["CidrIp"]) for r in wanted if "IpRanges" in r}
    stale = []
    for perm in group.get("IpPermissions", []):
        for rng in perm.get("IpRanges", []):
            if rng.get("Description") in OUR_DESCRIPTIONS and (perm.get("FromPort"), rng.get("CidrIp")) not in keep:
                stale.append({"IpProtocol": perm["IpProtocol"], "FromPort": perm["FromPort"],
                              "ToPort": perm["ToPort"], "IpRanges": [{"CidrIp": rng["CidrIp"]}]})
    return stale


def _run_params(cfg: ClusterConfig, spec: LaunchSpec, itype: str, subnet: str, group_id: str) -> dict[str, Any]:
    tags = {**cfg.tags, "shield:role": spec.role, "shield:node": spec.node, "Name": f"{cfg.resource_name}-{spec.node}",
            INCARNATION_TAG: group_id}
    spot: dict[str, Any] = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    if cfg.max_price is not None:
        spot["MaxPrice"] = f"{cfg.max_price:.4f}"
    profile = {"IamInstanceProfile": {"Name": cfg.instance_profile}} if cfg.instance_profile and spec.role == "ps" \
        else {}
    return {**profile,
        "ImageId": cfg.ami, "InstanceType": itype, "MinCount": 1, "MaxCount": 1, "KeyName": cfg.resource_name,
        "SubnetId": subnet, "SecurityGroupIds": [group_id],
        "InstanceInitiatedShutdownBehavior": "terminate",  # the boot watchdog's `shutdown` ends the bill
        "UserData": spec.user_data,  # botocore base64-encodes it
        "InstanceMarketOptions": {"MarketType": "spot", "SpotOptions": spot},
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "BlockDeviceMappings": [{"DeviceName": cfg.root_device,
                                 "Ebs": {"VolumeSize": cfg.disk_gb, "VolumeType": "gp3", "DeleteOnTermination": True}}],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tag_list(tags)},
                              {"ResourceType": "volume", "Tags": tag_list(tags)}],
    }


def latest_prices(history: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    """The newest price per (instance type, zone) of a spot price history."""
    latest: dict[tuple[str, str], tuple[dt.datetime, float]] = {}
    for entry in history:
        key = (entry["InstanceType"], entry.get("AvailabilityZone", "?"))
        stamp = entry.get("Timestamp") or dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        if key not in latest or stamp > latest[key][0]:
            latest[key] = (stamp, float(entry["SpotPrice"]))
    return {k: v for k, (_, v) in latest.items()}


def hourly_price(prices: dict[tuple[str, str], float], itype: str, zone: str | None = None) -> float | None:
    """The price of ``itype`` in ``zone``, or the cheapest zone's when ``zone`` is unknown."""
    if zone is not None and (itype, zone) in prices:
        return prices[(itype, zone)]
    candidates = [p for (t, _), p in prices.items() if t == itype]
    return min(candidates) if candidates else None


def _decode(raw: str | None) -> str:
    try:
        return base64.b64decode(raw or "").decode("utf-8", "replace")
    except ValueError:
        return ""


class EC2:
    """The :class:`~shield_ops.cloud.Cloud` on Amazon EC2, over one aiobotocore client."""

    def __init__(self, client: Any, session: Any = None) -> None:
        self.client = client
        self._session = session

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, region: str) -> AsyncIterator[EC2]:
        """An EC2 cloud for ``region`` (credentials and endpoint from botocore's standard chain), its one client
        closed on exit."""
        from aiobotocore.session import get_session

        session = get_session()
        async with session.create_client("ec2", region_name=region) as client:
            yield cls(client, session)

    async def credentials_source(self) -> str | None:
        if self._session is None:
            return None
        creds = await self._session.get_credentials()
        return None if creds is None else str(getattr(creds, "method", None) or "configured")

    # ------------------------------------------------------------------------------------------- discovery
    async def find_instances(self, cluster: Tagged, include_gone: bool = False) -> list[Node]:
        """Every live (not terminated) instance carrying this cluster's tag; with ``include_gone`` also the terminated
        ones EC2 still reports (for cost and history)."""
        filters = tag_filters(cluster)
        if not include_gone:
            filters = filters + [{"Name": "instance-state-name", "Values": LIVE_STATES}]
        nodes: list[Node] = []
        async for page in self.client.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                nodes.extend(Node.from_ec2(inst) for inst in reservation["Instances"])
        return nodes

    async def describe(self, instance_ids: list[str]) -> list[Node]:
        if not instance_ids:
            return []
        reply = await self.client.describe_instances(InstanceIds=instance_ids)
        return [Node.from_ec2(i) for r in reply["Reservations"] for i in r["Instances"]]

    async def security_groups(self, cluster: Tagged) -> list[dict[str, Any]]:
        return list((await self.client.describe_security_groups(Filters=tag_filters(cluster)))["SecurityGroups"])

    async def key_pairs(self, cluster: Tagged) -> list[dict[str, Any]]:
        return list((await self.client.describe_key_pairs(Filters=tag_filters(cluster)))["KeyPairs"])

    async def incarnations(self, cluster: Tagged) -> set[str]:
        """The ids of the cluster's tagged security groups: the current life(s) of the cluster."""
        return {str(g["GroupId"]) for g in await self.security_groups(cluster)}

    async def find_key_pair(self, cfg: ClusterConfig) -> dict[str, Any] | None:
        """The tagged key pair named ``shield-NAME``; a same-named key pair without our tag is refused."""
        tagged = await self.key_pairs(cfg)
        if tagged:
            return tagged[0]
        try:
            await self.client.describe_key_pairs(KeyNames=[cfg.resource_name])
        except ClientError as exc:
            if _code(exc).startswith("InvalidKeyPair"):
                return None
            raise _refused("DescribeKeyPairs", exc) from None
        raise ProvisionError(f"a key pair named {cfg.resource_name} exists without the tag shield:cluster={cfg.name}; "
                             "it is not ours: delete or rename it, or choose another cluster.name")

    async def find_security_group(self, cfg: ClusterConfig, vpc_id: str) -> dict[str, Any] | None:
        filters = tag_filters(cfg) + [{"Name": "vpc-id", "Values": [vpc_id]}]
        groups = (await self.client.describe_security_groups(Filters=filters))["SecurityGroups"]
        return groups[0] if groups else None

    async def resolve_vpc(self, cfg: ClusterConfig) -> str:
        if cfg.vpc_id:
            return cfg.vpc_id
        vpcs = (await self.client.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}]))["Vpcs"]
        if not vpcs:
            raise ProvisionError(f"region {cfg.region} has no default VPC; set network.vpc_id in the config")
        return str(vpcs[0]["VpcId"])

    async def subnets_by_zone(self, cfg: ClusterConfig, vpc_id: str) -> dict[str, str]:
        """Zone -> subnet id, in the configured zone order (all zones of the VPC when none are configured)."""
        reply = await self.client.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
        by_zone: dict[str, str] = {}
        for subnet in sorted(reply["Subnets"], key=lambda s: (not s.get("DefaultForAz", False), s["SubnetId"])):
            by_zone.setdefault(subnet["AvailabilityZone"], subnet["SubnetId"])
        if not cfg.zones:
            return dict(sorted(by_zone.items()))
        missing = [z for z in cfg.zones if z not in by_zone]
        if missing:
            raise ProvisionError(f"network.zones: no subnet of {vpc_id} in {', '.join(missing)}; "
                                 f"use zones from {', '.join(sorted(by_zone)) or '(none)'}")
        return {z: by_zone[z] for z in cfg.zones}

    async def user_data(self, instance_id: str) -> str:
        """The instance's user data as text ("" when EC2 refuses or there is none)."""
        try:
            reply = await self.client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
        except ClientError as exc:
            log.info("DescribeInstanceAttribute: %s", exc)
            return ""
        return _decode((reply.get("UserData") or {}).get("Value"))

    async def console_output(self, instance_id: str) -> str:
        """The newest console output of the instance ("" when EC2 refuses or has none yet)."""
        try:
            reply = await self.client.get_console_output(InstanceId=instance_id, Latest=True)
        except ClientError as exc:
            log.info("GetConsoleOutput: %s", exc)
            return ""
        return _decode(reply.get("Output"))

    async def spot_prices(self, instance_types: set[str]) -> dict[tuple[str, str], float]:
        """Latest Linux spot price per (instance type, zone) from the price history (empty when unavailable)."""
        if not instance_types:
            return {}
        try:
            reply = await self.client.describe_spot_price_history(
                InstanceTypes=sorted(instance_types), ProductDescriptions=["Linux/UNIX"],
                StartTime=dt.datetime.now(dt.timezone.utc))
        except ClientError as exc:
            log.warning("no spot price history: %s", exc)
            return {}
        return latest_prices(reply.get("SpotPriceHistory", []))

    # ------------------------------------------------------------------------------------------- creation
    async def import_key_pair(self, cfg: ClusterConfig, public_key: bytes) -> None:
        spec = [{"ResourceType": "key-pair", "Tags": tag_list(cfg.tags)}]
        try:
            await self.client.import_key_pair(KeyName=cfg.resource_name, PublicKeyMaterial=public_key,
                                              TagSpecifications=spec)
        except ClientError as exc:
            raise _refused("ImportKeyPair", exc) from None

    async def ensure_security_group(self, cfg: ClusterConfig, vpc_id: str, cidr: str) -> tuple[str, bool]:
        """Create the tagged group if missing and add any missing rule; returns (group id, created)."""
        group = await self.find_security_group(cfg, vpc_id)
        created = group is None
        try:
            if group is None:
                spec = [{"ResourceType": "security-group", "Tags": tag_list(cfg.tags)}]
                reply = await self.client.create_security_group(
                    GroupName=cfg.resource_name, Description=f"shield cluster {cfg.name}", VpcId=vpc_id,
                    TagSpecifications=spec)
                group = {"GroupId": reply["GroupId"], "IpPermissions": []}
            wanted = ingress_rules(cfg, group["GroupId"], cidr)
            missing = [r for r in wanted if not _has_rule(group, r)]
            if missing:
                await self.client.authorize_security_group_ingress(GroupId=group["GroupId"], IpPermissions=missing)
            stale = stale_rules(group, wanted)
            if stale:
                await self.client.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=stale)
        except ClientError as exc:
            raise _refused("the security group setup", exc) from None
        return str(group["GroupId"]), created

    async def launch(self, cfg: ClusterConfig, spec: LaunchSpec, subnets: dict[str, str], group_id: str,
                     on_retry: Callable[[str], None] = lambda _msg: None) -> Node:
        """Launch one spot instance, trying (type, zone) pools in order on capacity errors, at most
        ``spot.max_launch_attempts`` times; other errors fail at once."""
        pools = [(t, z) for t in spec.instance_types for z in subnets][: cfg.max_launch_attempts]
        tried: list[str] = []
        for itype, zone in pools:
            try:
                reply = await self.client.run_instances(**_run_params(cfg, spec, itype, subnets[zone], group_id))
                return Node.from_ec2(reply["Instances"][0])
            except ClientError as exc:
                if _code(exc) not in CAPACITY_CODES:
                    raise _refused(f"RunInstances for {spec.node} ({itype} in {zone})", exc) from None
                tried.append(f"{itype}@{zone}: {_code(exc)}")
                on_retry(f"{itype} in {zone}: {_code(exc)}, trying the next pool")
        raise CapacityError(f"no spot capacity for {spec.node} after {len(tried)} attempt(s) ({'; '.join(tried)}); "
                            "add instance types or zones, raise spot.max_launch_attempts or spot.max_price, or retry "
                            "later")

    async def _wait(self, waiter_name: str, instance_ids: list[str], timeout_s: float) -> None:
        if not instance_ids:
            return
        waiter = self.client.get_waiter(waiter_name)
        attempts = max(1, int(timeout_s // WAITER_DELAY_S))
        try:
            await waiter.wait(InstanceIds=instance_ids, WaiterConfig={"Delay": WAITER_DELAY_S, "MaxAttempts": attempts})
        except WaiterError as exc:
            raise ProvisionError(f"{waiter_name} for {', '.join(instance_ids)} did not complete: {exc}") from None

    async def wait_running(self, instance_ids: list[str], timeout_s: float = 600) -> None:
        """Wait with botocore's waiter until every instance runs, at most ``timeout_s``."""
        await self._wait("instance_running", instance_ids, timeout_s)

    async def wait_terminated(self, instance_ids: list[str], timeout_s: float = 600) -> None:
        await self._wait("instance_terminated", instance_ids, timeout_s)

    async def _live_ids(self, cluster: Tagged) -> set[str]:
        return {n.instance_id for n in await self.find_instances(cluster)}

    async def tag_spot_notice(self, cluster: Tagged, notices: dict[str, str]) -> None:
        """Tag instances (id -> the notice's time) ``shield:spot-notice``: from then on ``up`` launches their node
        afresh and leaves them to EC2 (terminating them once the heir exists). Only this cluster's instances."""
        if not notices:
            return
        tagged = await self._live_ids(cluster)
        for instance_id, when in notices.items():
            if instance_id not in tagged:
                raise ProvisionError(f"refusing to tag {instance_id}: not a live instance of cluster "
                                     f"{cluster_name(cluster)}")
            value = "".join(c for c in when if c.isprintable())[:64] or "unknown"
            try:
                await self.client.create_tags(Resources=[instance_id], Tags=[{"Key": SPOT_NOTICE_TAG, "Value": value}])
            except ClientError as exc:
                raise _refused("CreateTags", exc) from None

    async def tag_life(self, cluster: Tagged, group_id: str, tags: dict[str, str]) -> None:
        """Tag the cluster's security group ``group_id`` (one life), after checking it carries the cluster tag."""
        if group_id not in await self.incarnations(cluster):
            raise ProvisionError(f"refusing to tag {group_id}: not a security group of cluster {cluster_name(cluster)}")
        clean = {k: "".join(c for c in v if c.isprintable())[:255] for k, v in tags.items()}
        try:
            await self.client.create_tags(Resources=[group_id], Tags=tag_list(clean))
        except ClientError as exc:
            raise _refused("CreateTags", exc) from None

    # ------------------------------------------------------------------------------------------- deletion
    async def terminate(self, cluster: Tagged, nodes: list[Node]) -> None:
        """Terminate ``nodes``, re-checking the cluster tag of each id first (never by key name)."""
        ids = [n.instance_id for n in nodes]
        if not ids:
            return
        tagged = await self._live_ids(cluster)
        foreign = [i for i in ids if i not in tagged]
        if foreign:
            raise ProvisionError(f"refusing to terminate {', '.join(foreign)}: not tagged "
                                 f"shield:cluster={cluster_name(cluster)}")
        try:
            await self.client.terminate_instances(InstanceIds=ids)
        except ClientError as exc:
            raise _refused("TerminateInstances", exc) from None

    async def delete_security_group(self, group_id: str, attempts: int = 30) -> None:
        """Delete the group, retrying while terminated instances' interfaces still hold it."""
        for attempt in range(attempts):
            try:
                await self.client.delete_security_group(GroupId=group_id)
                return
            except ClientError as exc:
                if _code(exc) != "DependencyViolation" or attempt == attempts - 1:
                    raise _refused(f"DeleteSecurityGroup {group_id}", exc) from None
                await asyncio.sleep(WAITER_DELAY_S)

    async def delete_key_pair(self, key: dict[str, Any]) -> None:
        """Delete a key pair that was found by its tag (``key`` comes from a tag-filtered describe)."""
        try:
            await self.client.delete_key_pair(KeyName=key["KeyName"])
        except ClientError as exc:
            raise _refused(f"DeleteKeyPair {key.get('KeyName')}", exc) from None
