"""``shield-ops ssh NODE [-- CMD]``: an interactive OpenSSH session on one node, host key checked."""
from __future__ import annotations

import argparse
import os
import shlex

from shield_ops.commands.common import add_config_args, arun, discover, load, select
from shield_ops.config import ClusterConfig
from shield_ops.nodes import Node, resolve
from shield_ops.state import ClusterState


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ssh", help="open a shell on a node (ps, agent-0, ...)")
    add_config_args(p)
    p.add_argument("node", help="node name: ps, agent-0, agent-1, ...")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="optional command (after --)")


def ssh_argv(cfg: ClusterConfig, state: ClusterState, node: Node, insecure: bool, cmd: list[str]) -> list[str]:
    """The OpenSSH command line: cluster key only, the per-cluster known_hosts only, strict checking."""
    endpoint = resolve(node)
    if insecure:
        checking = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    else:
        known = state.write_known_hosts({(endpoint.host, endpoint.port): node.instance_id})
        policy = "yes" if state.host_key(node.instance_id) is not None else "accept-new"
        checking = ["-o", f"StrictHostKeyChecking={policy}", "-o", f"UserKnownHostsFile={known}"]
    state.private_key()  # fails clearly when missing or too open
    if cfg.ssh_endpoint == "bastion" and cfg.ssh_bastion is not None:
        user, host, port = cfg.ssh_bastion
        jump_check = ("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null" if insecure else
                      "-o StrictHostKeyChecking=yes "
                      f"-o UserKnownHostsFile={shlex.quote(str(cfg.ssh_bastion_known_hosts))}")
        checking += ["-o", f"ProxyCommand=ssh -F /dev/null -i {shlex.quote(str(state.key_path))} -o IdentitiesOnly=yes "
                     f"-o IdentityAgent=none {jump_check} -W %h:%p -p {port} {user}@{host}"]
    return (["ssh", "-F", "/dev/null", "-i", str(state.key_path), "-o", "IdentitiesOnly=yes",
             "-o", "IdentityAgent=none", "-o", "GlobalKnownHostsFile=/dev/null", *checking,
             "-p", str(endpoint.port), f"{cfg.ssh_user}@{endpoint.host}"] + cmd)


def run(args: argparse.Namespace) -> int:
    cfg, state = load(args)
    node = select(arun(discover(cfg)), [args.node])[0]
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    argv = ssh_argv(cfg, state, node, args.insecure_accept_hostkeys, cmd)
    os.execvp(argv[0], argv)
    return 255  # not reached
