"""The local per-cluster state directory: SSH key, cluster token, host keys, known_hosts.

Default ``~/.shield/clusters/NAME/``. Secrets are created 0600 with ``O_EXCL`` (never overwritten), the directory
0700, and the directory is refused when it lies inside a git checkout (a private key must never be committed).
The cloud (tags) is the truth for which nodes exist; this directory only holds what cannot live in the cloud.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import asyncssh

from shield_ops.errors import StateError

log = logging.getLogger(__name__)

KEY_FILE = "id_ed25519"
TOKEN_FILE = "token"
KNOWN_HOSTS = "known_hosts"
HOSTKEY_DIR = "hostkeys"
LEDGER_FILE = "ledger.json"  # every instance seen, with its times and price (shield_ops.cost)
AUTOSTOP_FILE = "autostop.json"  # why the cluster stopped itself, as last read from the cloud (shield_ops.autostop)


def _inside_git_checkout(path: Path) -> Path | None:
    for parent in [path, *path.parents]:
        if (parent / ".git").exists():
            return parent
    return None


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


class ClusterState:
    """Files of one cluster under ``root``; :meth:`ensure` creates the directory and the secrets once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    @property
    def key_path(self) -> Path:
        return self.root / KEY_FILE

    @property
    def token_path(self) -> Path:
        return self.root / TOKEN_FILE

    @property
    def known_hosts_path(self) -> Path:
        return self.root / KNOWN_HOSTS

    def check_location(self) -> None:
        """Refuse a state directory inside a git working tree."""
        repo = _inside_git_checkout(self.root)
        if repo is not None:
            raise StateError(f"state directory {self.root} is inside the git checkout {repo}; private keys must "
                             "not live there: use the default ~/.shield/clusters/NAME or --state-dir elsewhere")

    def ensure(self) -> None:
        """Create the directory (0700), the cluster SSH key (ed25519, 0600) and the cluster token, once."""
        self.check_location()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        (self.root / HOSTKEY_DIR).mkdir(exist_ok=True, mode=0o700)
        if not self.key_path.exists():
            key = asyncssh.generate_private_key("ssh-ed25519", comment=f"shield-ops {self.root.name}")
            _write_secret(self.key_path, key.export_private_key("openssh"))
            self.key_path.with_suffix(".pub").write_bytes(key.export_public_key("openssh"))
            log.info("generated cluster key %s", self.key_path)
        if not self.token_path.exists():
            _write_secret(self.token_path, secrets.token_hex(32).encode() + b"\n")

    def private_key(self) -> asyncssh.SSHKey:
        """The cluster's SSH private key; a clear error when the file is missing or too open."""
        try:
            mode = self.key_path.stat().st_mode & 0o777
        except FileNotFoundError:
            raise StateError(f"no cluster key at {self.key_path}; run `shield-ops up` to create the cluster, or "
                             "restore the state directory (--state-dir) it was created with") from None
        if mode & 0o077:
            raise StateError(f"{self.key_path} is readable by others (mode {mode:o}); run chmod 600 on it")
        return asyncssh.read_private_key(self.key_path)

    def public_key_openssh(self) -> bytes:
        return self.private_key().export_public_key("openssh")

    def token(self) -> bytes:
        try:
            return self.token_path.read_bytes()
        except FileNotFoundError:
            raise StateError(f"no cluster token at {self.token_path}; run `shield-ops up` first") from None

    # ------------------------------------------------------------------ host keys (pinned or first-seen)
    def _hostkey_path(self, instance_id: str) -> Path:
        if not instance_id.replace("-", "").isalnum():
            raise StateError(f"refusing odd instance id {instance_id!r}")
        return self.root / HOSTKEY_DIR / f"{instance_id}.pub"

    def host_key(self, instance_id: str) -> asyncssh.SSHKey | None:
        """The host key recorded for an instance (pinned at launch or trusted on first use), if any."""
        path = self._hostkey_path(instance_id)
        return asyncssh.read_public_key(path) if path.exists() else None

    def record_host_key(self, instance_id: str, key: asyncssh.SSHKey) -> None:
        self._hostkey_path(instance_id).write_bytes(key.export_public_key("openssh"))

    def forget_host_key(self, instance_id: str) -> None:
        self._hostkey_path(instance_id).unlink(missing_ok=True)

    def write_known_hosts(self, entries: dict[tuple[str, int], str]) -> Path:
        """Write an OpenSSH known_hosts for ``shield-ops ssh``: (host, port) -> instance id."""
        lines = []
        for (host, port), instance_id in sorted(entries.items()):
            key = self.host_key(instance_id)
            if key is None:
                continue
            pattern = host if port == 22 else f"[{host}]:{port}"
            lines.append(f"{pattern} {key.export_public_key('openssh').decode().strip()}\n")
        self.known_hosts_path.write_text("".join(lines))
        return self.known_hosts_path

    def save_autostop(self, text: str) -> None:
        """Keep the last autostop record seen (JSON), atomically; nothing when the state directory is gone."""
        if not self.root.is_dir():
            return
        tmp = self.root / f".{AUTOSTOP_FILE}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.root / AUTOSTOP_FILE)

    def load_autostop(self) -> str | None:
        try:
            return (self.root / AUTOSTOP_FILE).read_text()[:65536]
        except OSError:
            return None

    def destroy(self) -> None:
        """Delete the files this module created (after ``down``); the directory goes if it is then empty."""
        for path in (self.root / HOSTKEY_DIR).glob("*.pub") if (self.root / HOSTKEY_DIR).exists() else ():
            path.unlink()
        for path in (self.key_path, self.key_path.with_suffix(".pub"), self.token_path, self.known_hosts_path,
                     self.root / LEDGER_FILE, self.root / AUTOSTOP_FILE, self.root / HOSTKEY_DIR):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        try:
            self.root.rmdir()
        except OSError:
            pass
