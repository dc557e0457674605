"""Errors raised by shield-ops: one small hierarchy, each with a short ``code``.

The CLI turns every :class:`ShieldOpsError` into one line on stderr and exit status 2.
"""
from __future__ import annotations


class ShieldOpsError(Exception):
    """Base of every error shield-ops raises on purpose."""

    code = "ops"


class ConfigError(ShieldOpsError, ValueError):
    """A cluster configuration that cannot work; the message names the field and the fix."""

    code = "config"


class StateError(ShieldOpsError):
    """The local per-cluster state (keys, token, host keys) is missing, foreign or unsafe."""

    code = "state"


class ProvisionError(ShieldOpsError):
    """EC2 refused or failed a request we cannot work around."""

    code = "provision"


class CapacityError(ProvisionError):
    """Every configured (instance type, zone) pair ran out of spot capacity within the attempt bound."""

    code = "capacity"


class RemoteError(ShieldOpsError):
    """A node could not be reached over SSH, or a remote command failed."""

    code = "remote"


class HostKeyError(RemoteError):
    """A node presented a host key that differs from the pinned or first-seen one."""

    code = "hostkey"
