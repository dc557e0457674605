"""The cluster configuration: a TOML file, validated field by field.

Every error names the field (``section.key``) and says how to fix it. ``--set section.key=value`` flags override the
file. Unknown sections and keys are errors (with the closest known name suggested), so a typo never silently falls
back to a default.
"""
from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomllib

from shield_ops.errors import ConfigError

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
#: flags of ``shield-ps serve`` / ``shield-agent join`` that shield-ops sets itself.
RESERVED_PS_FLAGS = ("--host", "--port", "--token", "--token-file", "--data-dir", "--train-dir", "--workers",
                     "--local-agents")
RESERVED_AGENT_FLAGS = ("--token", "--token-file", "--data-dir", "--name")


@dataclass(frozen=True)
class RoleConfig:
    """Instances of one role (the PS or the agents)."""

    count: int
    instance_types: tuple[str, ...]
    args: tuple[str, ...]


@dataclass(frozen=True)
class ClusterConfig:
    """A validated cluster configuration (see ``examples/cluster.toml`` for every field, commented)."""

    name: str
    region: str
    state_dir: Path
    zones: tuple[str, ...]
    vpc_id: str | None
    operator_cidr: str
    ami: str
    ssh_user: str
    root_device: str
    disk_gb: int
    ps: RoleConfig
    ps_port: int
    agents: RoleConfig
    max_price: float | None
    max_launch_attempts: int
    python: str
    venv_args: tuple[str, ...]
    pip_args: tuple[str, ...]
    dataset: str
    prepare: bool
    upload_data: Path | None
    host_keys: str
    ssh_ready_timeout: float
    ssh_retry_interval: float
    start_timeout: float
    down_when_done: bool = False
    max_hours: float | None = None
    max_cost: float | None = None
    autostop_interval: float = 10.0
    idle_minutes: float = 30.0
    instance_profile: str | None = None
    mixed_types: bool = False
    ssh_endpoint: str = "public"
    ssh_bastion: tuple[str, str, int] | None = None
    ssh_bastion_known_hosts: Path | None = None
    mirror_bucket: str | None = None
    mirror_prefix: str = ""

    @property
    def supervised(self) -> bool:
        """Whether the PS node runs the supervisor (an autostop limit, or the S3 mirror, is configured)."""
        return self.down_when_done or self.max_hours is not None or self.max_cost is not None or self.mirrored

    @property
    def mirrored(self) -> bool:
        return self.mirror_bucket is not None

    @property
    def tags(self) -> dict[str, str]:
        """The tags every resource of this cluster carries; discovery and ``down`` go by these only."""
        return {"shield:cluster": self.name}

    @property
    def resource_name(self) -> str:
        return f"shield-{self.name}"

    def node_names(self) -> list[str]:
        """The desired nodes: ``ps`` then ``agent-0`` .. ``agent-{K-1}``."""
        return ["ps"] + [f"agent-{i}" for i in range(self.agents.count)]

    def deploy_fingerprint(self) -> str:
        """A hash of everything that changes what ``deploy`` installs (the wheel hash is mixed in by the caller)."""
        fields = {k: v for k, v in asdict(self).items()
                  if k in ("python", "venv_args", "pip_args", "dataset", "prepare", "upload_data")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- field checkers
Checker = Callable[[str, Any], Any]


def _fail(where: str, problem: str, fix: str) -> ConfigError:
    return ConfigError(f"{where}: {problem}; {fix}")


def _string(pattern: re.Pattern[str] | None = None, fix: str = "", allow_empty: bool = False) -> Checker:
    def check(where: str, value: Any) -> str:
        if allow_empty and value == "":
            return value
        if not isinstance(value, str) or not value:
            raise _fail(where, f"must be a non-empty string (got {value!r})", fix or "quote it, e.g. \"value\"")
        if pattern is not None and not pattern.match(value):
            raise _fail(where, f"{value!r} is not allowed", fix)
        return value
    return check


def _integer(low: int, high: int) -> Checker:
    def check(where: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _fail(where, f"must be an integer in [{low}, {high}] (got {value!r})", f"write e.g. {max(low, 1)}")
        return value
    return check


def _number(low: float, high: float, optional: bool = False) -> Checker:
    def check(where: str, value: Any) -> float | None:
        if optional and value in (None, 0, 0.0, ""):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < float(value) <= high:
            raise _fail(where, f"must be a number in ({low}, {high}] (got {value!r})", "write e.g. 1.5")
        return float(value)
    return check


def _minutes(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) <= 10080:
        raise _fail(where, f"must be a number of minutes in [0, 10080] (got {value!r})",
                    "write e.g. 30, or 0 for never")
    return float(value)


def _boolean(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, f"must be true or false (got {value!r})", "write true or false, unquoted")
    return value


def _strings(min_len: int = 0, item: re.Pattern[str] | None = None, fix: str = "") -> Checker:
    def check(where: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise _fail(where, f"must be a list of strings (got {value!r})", 'write e.g. ["a", "b"]')
        if len(value) < min_len:
            raise _fail(where, f"needs at least {min_len} entr{'y' if min_len == 1 else 'ies'}", fix or "add one")
        for v in value:
            if item is not None and not item.match(v):
                raise _fail(where, f"entry {v!r} is not allowed", fix)
        return tuple(value)
    return check


def _cidr(where: str, value: Any) -> str:
    if value == "auto":
        return value
    try:
        net = ipaddress.ip_network(value, strict=False)
    except (TypeError, ValueError):
        raise _fail(where, f"{value!r} is not a CIDR", 'write your address as "203.0.113.7/32", or "auto"') from None
    if net.prefixlen == 0:
        raise _fail(where, f"{value} would open SSH and the PS port to the whole internet",
                    'use your own address, e.g. "203.0.113.7/32", or "auto" to detect it')
    return str(net)


def _path(optional: bool) -> Checker:
    def check(where: str, value: Any) -> Path | None:
        if optional and value in (None, ""):
            return None
        if not isinstance(value, str) or not value:
            raise _fail(where, f"must be a path string (got {value!r})", 'write e.g. "~/data/mnist"')
        return Path(value).expanduser()
    return check


def _choice(*allowed: str) -> Checker:
    def check(where: str, value: Any) -> str:
        if value not in allowed:
            raise _fail(where, f"{value!r} is not one of {', '.join(allowed)}", f'write one of: {", ".join(allowed)}')
        return value
    return check


def _args(reserved: Sequence[str], who: str) -> Checker:
    base = _strings()

    def check(where: str, value: Any) -> tuple[str, ...]:
        args = base(where, value)
        for arg in args:
            if arg.split("=", 1)[0] in reserved:
                raise _fail(where, f"{arg.split('=', 1)[0]} is set by shield-ops for {who}",
                            "remove it (ports, token, data and run directories come from the other fields)")
        return args
    return check


BASTION_RE = re.compile(r"^([a-z_][a-z0-9_-]*)@([A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(?::(\d{1,5}))?$")
AMI_RE = re.compile(r"^(ami-[0-9a-f]{8,17}|resolve:ssm:/\S+)$")
TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
ZONE_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d[a-z]$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")

#: section -> key -> (checker, default; ``...`` means required).
SCHEMA: dict[str, dict[str, tuple[Checker, Any]]] = {
    "cluster": {
        "name": (_string(NAME_RE, "use 2-32 characters of a-z, 0-9 and '-', starting with a letter"), ...),
        "region": (_string(REGION_RE, 'write an AWS region such as "us-east-1"'), ...),
        "state_dir": (_path(True), None),
    },
    "network": {
        "zones": (_strings(item=ZONE_RE, fix='write zones such as "us-east-1a"'), []),
        "vpc_id": (_string(re.compile(r"^vpc-[0-9a-f]+$"), 'write "vpc-..." or "" for the default VPC', True), ""),
        "operator_cidr": (_cidr, ...),
    },
    "nodes": {
        "ami": (_string(AMI_RE, 'write "ami-0123456789abcdef0" or "resolve:ssm:/aws/service/..."'), ...),
        "ssh_user": (_string(re.compile(r"^[a-z_][a-z0-9_-]*$"), 'write e.g. "ubuntu"'), "ubuntu"),
        "root_device": (_string(re.compile(r"^/dev/\w+$"), 'write the AMI root device, e.g. "/dev/sda1"'),
                        "/dev/sda1"),
        "disk_gb": (_integer(8, 16384), 30),
        "ssh_endpoint": (_choice("public", "private", "bastion"), "public"),
        "ssh_bastion": (_string(BASTION_RE, 'write "user@host" or "user@host:port"', True), ""),
        "ssh_bastion_known_hosts": (_path(True), None),
    },
    "ps": {
        "instance_types": (_strings(1, TYPE_RE, 'write types such as "c7i.2xlarge"'), ...),
        "port": (_integer(1024, 65535), 7700),
        "args": (_args(RESERVED_PS_FLAGS, "shield-ps serve"), []),
    },
    "agents": {
        "count": (_integer(1, 1000), ...),
        "instance_types": (_strings(1, TYPE_RE, 'write types such as "c7i.xlarge"'), ...),
        "args": (_args(RESERVED_AGENT_FLAGS, "shield-agent join"), []),
    },
    "spot": {
        "max_price": (_number(0.0, 1000.0, optional=True), None),
        "max_launch_attempts": (_integer(1, 100), 6),
        "mixed_types": (_boolean, False),
    },
    "deploy": {
        "python": (_string(), "python3"),
        "venv_args": (_strings(), []),
        "pip_args": (_strings(), []),
        "dataset": (_string(re.compile(r"^[A-Za-z0-9_-]+$"), 'write a dataset name such as "MNIST"'), "MNIST"),
        "prepare": (_boolean, True),
        "upload_data": (_path(True), None),
        "host_keys": (_choice("pin", "tofu"), "pin"),
        "ssh_ready_timeout": (_number(0.0, 3600.0), 600.0),
        "ssh_retry_interval": (_number(0.0, 60.0), 5.0),
        "start_timeout": (_number(0.0, 3600.0), 180.0),
    },
    "autostop": {
        "down_when_done": (_boolean, False),
        "max_hours": (_number(0.0, 8760.0, optional=True), None),
        "max_cost": (_number(0.0, 1e6, optional=True), None),
        "interval_s": (_number(0.0, 3600.0), 10.0),
        "idle_minutes": (_minutes, 30.0),
        "instance_profile": (_string(re.compile(r"^[\w+=,.@-]{1,128}$"), 'write an IAM instance profile name',
                                     True), ""),
    },
    "mirror": {
        "bucket": (_string(re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"), 'write an S3 bucket name, e.g. '
                           '"my-shield-runs", or "" for no mirror', True), ""),
        "prefix": (_string(re.compile(r"^[\w./-]*$"), 'write a key prefix such as "runs/demo"', True), ""),
    },
}


def _suggest(word: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value`` (the value as a TOML value, else as a plain string)."""
    dotted, sep, raw = text.partition("=")
    section, dot, key = dotted.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE; write e.g. --set agents.count=3")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def validate(raw: Mapping[str, Any], source: str = "config",
             overrides: Sequence[str] = (), state_dir: Path | None = None) -> ClusterConfig:
    """Check every field of a parsed TOML document and return the typed configuration.

    Raises :class:`ConfigError` naming ``source: section.key`` and the fix for the first problem found.
    """
    data: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]; {_suggest(section, list(SCHEMA))}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {section} must be a [{section}] table; write it as a TOML section")
        data[section] = dict(table)
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SCHEMA:
            raise ConfigError(f"--set {text}: unknown section {section!r}; {_suggest(section, list(SCHEMA))}")
        data.setdefault(section, {})[key] = value
    out: dict[str, Any] = {}
    for section, fields in SCHEMA.items():
        table = data.get(section, {})
        for key in table:
            if key not in fields:
                raise ConfigError(f"{source}: unknown field {section}.{key}; {_suggest(key, list(fields))}")
        for key, (check, default) in fields.items():
            where = f"{source}: {section}.{key}"
            if key not in table:
                if default is ...:
                    raise ConfigError(f"{where}: missing; add `{key} = ...` under [{section}] "
                                      "(see examples/cluster.toml)")
                out[f"{section}.{key}"] = default if not isinstance(default, list) else tuple(default)
                continue
            out[f"{section}.{key}"] = check(where, table[key])
    return _build(out, source, state_dir)


def _build(v: dict[str, Any], source: str, state_dir: Path | None) -> ClusterConfig:
    name = v["cluster.name"]
    base = state_dir or v["cluster.state_dir"] or Path("~/.shield/clusters").expanduser() / name
    for zone in v["network.zones"]:
        if not zone.startswith(v["cluster.region"]):
            raise ConfigError(f"{source}: network.zones: {zone!r} is not in region {v['cluster.region']!r}; "
                              f"list zones of that region such as \"{v['cluster.region']}a\"")
    if v["deploy.upload_data"] is not None and not v["deploy.upload_data"].is_dir():
        raise ConfigError(f"{source}: deploy.upload_data: {v['deploy.upload_data']} is not a directory; "
                          "point it at a local folder of dataset files, or remove the field")
    bastion = None
    if v["nodes.ssh_endpoint"] == "bastion":
        match = BASTION_RE.match(v["nodes.ssh_bastion"] or "")
        if match is None:
            raise ConfigError(f"{source}: nodes.ssh_bastion: ssh_endpoint = \"bastion\" needs the jump host; "
                              'write e.g. ssh_bastion = "ubuntu@203.0.113.9:22"')
        if v["nodes.ssh_bastion_known_hosts"] is None or not v["nodes.ssh_bastion_known_hosts"].is_file():
            raise ConfigError(f"{source}: nodes.ssh_bastion_known_hosts: the bastion's host key must be known; "
                              "point it at an OpenSSH known_hosts file holding it (ssh-keyscan, checked)")
        bastion = (match.group(1), match.group(2).strip("[]"), int(match.group(3) or 22))
    return ClusterConfig(
        ssh_endpoint=v["nodes.ssh_endpoint"], ssh_bastion=bastion,
        ssh_bastion_known_hosts=v["nodes.ssh_bastion_known_hosts"],
        name=name, region=v["cluster.region"], state_dir=Path(base).expanduser(),
        zones=tuple(v["network.zones"]), vpc_id=v["network.vpc_id"] or None,
        operator_cidr=v["network.operator_cidr"],
        ami=v["nodes.ami"], ssh_user=v["nodes.ssh_user"], root_device=v["nodes.root_device"],
        disk_gb=v["nodes.disk_gb"],
        ps=RoleConfig(1, v["ps.instance_types"], v["ps.args"]), ps_port=v["ps.port"],
        agents=RoleConfig(v["agents.count"], v["agents.instance_types"], v["agents.args"]),
        max_price=v["spot.max_price"], max_launch_attempts=v["spot.max_launch_attempts"],
        mixed_types=v["spot.mixed_types"],
        python=v["deploy.python"], venv_args=tuple(v["deploy.venv_args"]), pip_args=tuple(v["deploy.pip_args"]),
        dataset=v["deploy.dataset"], prepare=v["deploy.prepare"], upload_data=v["deploy.upload_data"],
        host_keys=v["deploy.host_keys"], ssh_ready_timeout=v["deploy.ssh_ready_timeout"],
        ssh_retry_interval=v["deploy.ssh_retry_interval"], start_timeout=v["deploy.start_timeout"],
        down_when_done=v["autostop.down_when_done"], max_hours=v["autostop.max_hours"],
        max_cost=v["autostop.max_cost"], autostop_interval=v["autostop.interval_s"],
        idle_minutes=v["autostop.idle_minutes"],
        instance_profile=v["autostop.instance_profile"] or None, mirror_bucket=v["mirror.bucket"] or None,
        mirror_prefix=v["mirror.prefix"].strip("/") or f"shield/{name}",
    )


def load_config(path: str | Path, overrides: Sequence[str] = (), state_dir: Path | None = None) -> ClusterConfig:
    """Read and validate a cluster TOML file (``overrides`` are ``section.key=value`` strings)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}); pass an existing file with -c, "
                          "e.g. -c examples/cluster.toml") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax at that line") from None
    return validate(raw, str(path), overrides, state_dir)
