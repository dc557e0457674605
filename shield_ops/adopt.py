"""Adopting half-launched nodes: a node whose host key was never recorded (``up`` interrupted between the launch and
the write) gets it back from EC2, never by trusting what the node presents.

First from the instance's user data (``DescribeInstanceAttribute userData``): ``up`` pinned the key there itself, and
only someone with EC2 rights on the account can write it. Else from the console output, where cloud-init prints the
host keys between ``-----BEGIN SSH HOST KEY KEYS-----`` and ``-----END SSH HOST KEY KEYS-----`` (a minute or two
after boot). Else the node is left unadopted with a message saying what to do.
"""
from __future__ import annotations

import logging
import re

import asyncssh

from shield_ops.cloud import Cloud
from shield_ops.nodes import Node
from shield_ops.state import ClusterState

log = logging.getLogger(__name__)

_PUBLIC_IN_USER_DATA = re.compile(r"^\s*ed25519_public:\s*(ssh-ed25519 [A-Za-z0-9+/=]+)", re.MULTILINE)
_CONSOLE_BLOCK = re.compile(r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", re.DOTALL)
_CONSOLE_KEY = re.compile(r"(ssh-ed25519 [A-Za-z0-9+/=]+)")
MAX_TEXT = 1 << 20


def key_from_user_data(text: str) -> asyncssh.SSHKey | None:
    """The ed25519 host key ``up`` pinned in cloud-init user data, if any."""
    match = _PUBLIC_IN_USER_DATA.search(text[:MAX_TEXT])
    return _import(match.group(1)) if match else None


def key_from_console(text: str) -> asyncssh.SSHKey | None:
    """The ed25519 host key cloud-init printed on the console, if it has."""
    block = _CONSOLE_BLOCK.search(text[-MAX_TEXT:])
    match = _CONSOLE_KEY.search(block.group(1)) if block else None
    return _import(match.group(1)) if match else None


def _import(line: str) -> asyncssh.SSHKey | None:
    try:
        return asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError):
        return None


async def adopt_host_keys(cloud: Cloud, state: ClusterState, nodes: list[Node]) -> dict[str, str]:
    """Record a host key for every node that has none; returns node name -> where it came from, or why not."""
    outcome: dict[str, str] = {}
    for node in nodes:
        if state.host_key(node.instance_id) is not None:
            continue
        key = key_from_user_data(await cloud.user_data(node.instance_id))
        source = "its user data"
        if key is None:
            key = key_from_console(await cloud.console_output(node.instance_id))
            source = "its console output"
        if key is None:
            outcome[node.name] = ("no host key in its user data or console output yet (the console shows it a minute "
                                  "or two after boot): run `up` again later, or `down` it")
            continue
        state.record_host_key(node.instance_id, key)
        outcome[node.name] = f"host key re-pinned from {source}"
    return outcome
