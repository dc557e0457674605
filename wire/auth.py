"""Authentication and roles (pure): HMAC-SHA256 challenge-response on a cluster token, both directions.

Handshake (every field in the frame header's user map)::

    client -> HELLO     {"version": int, "role": "agent" | "observer", "name": str, "nonce": 32 random bytes}
    server -> CHALLENGE {"nonce": 32 random bytes, fresh per connection}
    client -> AUTH      {"nonce": the server nonce echoed,
                         "mac": client_mac(token, server nonce, role, name, client nonce)}
    server -> WELCOME   {"id": assigned int, "mac": server_mac(token, client nonce, server nonce, id)}

The token never crosses the wire; MACs are compared in constant time; the server redeems each nonce it issued at most
once (a replayed AUTH is refused) and the client checks the server's MAC (a fake PS is refused too). The role then fixes
which kinds the peer may send (:data:`ROLE_SENDS`): an observer can never submit a gradient.
"""
from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import os
import secrets
from typing import Any

from wire.errors import AuthError, TokenError
from wire.frames import PROTOCOL_VERSION, Kind

NONCE_SIZE = 32
MAC_SIZE = 32
MIN_TOKEN_BYTES = 16
MAX_NAME_CHARS = 128
_CONTEXT = b"shield-wire-auth-v1"


class Role(str, enum.Enum):
    """Who is connecting; the value travels in HELLO."""

    AGENT = "agent"
    OBSERVER = "observer"
    RELAY = "relay"  # another agent asking an agent's relay server for a step's parameters (shield_agent.relay)


#: What each role may send to the server once authenticated (replies included). Extend here, nowhere else.
ROLE_SENDS: dict[Role, frozenset[Kind]] = {
    Role.AGENT: frozenset({Kind.JOB, Kind.DIGESTS, Kind.VECTOR, Kind.SKETCH, Kind.RELAY, Kind.HEARTBEAT,
                           Kind.LEAVE, Kind.ERROR}),
    Role.OBSERVER: frozenset({Kind.SUBSCRIBE, Kind.HEARTBEAT, Kind.LEAVE, Kind.ERROR}),
    Role.RELAY: frozenset({Kind.RELAY, Kind.HEARTBEAT, Kind.LEAVE, Kind.ERROR}),
}


def token_bytes(token: str | bytes) -> bytes:
    """The cluster token as bytes; refuses short tokens (use ``secrets.token_hex(32)``)."""
    raw = token.encode() if isinstance(token, str) else bytes(token)
    if len(raw) < MIN_TOKEN_BYTES:
        raise ValueError(f"cluster token must be at least {MIN_TOKEN_BYTES} bytes")
    return raw


def read_token(token: str | None, token_file: str | None, *, env: str = "SHIELD_TOKEN") -> str | None:
    """The cluster token from ``--token-file``, ``--token`` or ``$SHIELD_TOKEN`` (in that order); None when none is
    given. Raises :class:`TokenError` when the file cannot be read or the token is shorter than 16 bytes."""
    if token_file:
        try:
            with open(os.path.expanduser(token_file), encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise TokenError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    token = token or os.environ.get(env) or None
    if token is not None and len(token.encode()) < MIN_TOKEN_BYTES:
        raise TokenError(f"the cluster token must be at least {MIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 32`)")
    return token


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def _mac(token: bytes, *parts: bytes) -> bytes:
    msg = b"|".join((_CONTEXT,) + tuple(len(p).to_bytes(4, "little") + p for p in parts))
    return hmac.new(token, msg, hashlib.sha256).digest()


def client_mac(token: bytes, server_nonce: bytes, role: Role, name: str, client_nonce: bytes) -> bytes:
    """HMAC-SHA256(token, server nonce || context) binding the role, name and client nonce of this HELLO."""
    return _mac(token, server_nonce, b"client", role.value.encode(), name.encode(), client_nonce)


def server_mac(token: bytes, client_nonce: bytes, server_nonce: bytes, peer_id: int) -> bytes:
    """HMAC-SHA256(token, client nonce || context): the server's proof that it holds the token too."""
    return _mac(token, client_nonce, b"server", server_nonce, str(peer_id).encode())


def mac_ok(expected: bytes, got: Any) -> bool:
    """Constant-time comparison (false for anything that is not ``bytes`` of the right size)."""
    return type(got) is bytes and len(got) == MAC_SIZE and hmac.compare_digest(expected, got)


def _field(header: dict[str, Any], key: str, typ: type) -> Any:
    value = header.get(key)
    if type(value) is not typ:
        raise AuthError(f"missing or malformed {key!r}")
    return value


def _nonce(header: dict[str, Any]) -> bytes:
    nonce = _field(header, "nonce", bytes)
    if len(nonce) != NONCE_SIZE:
        raise AuthError("nonce of the wrong size")
    return nonce


def parse_hello(header: dict[str, Any]) -> tuple[Role, str, bytes]:
    """``(role, name, client nonce)`` from a HELLO; :class:`AuthError` on a bad version, role or field."""
    version = _field(header, "version", int)
    if version != PROTOCOL_VERSION:
        raise AuthError(f"protocol version {version} not supported (server speaks {PROTOCOL_VERSION})")
    try:
        role = Role(_field(header, "role", str))
    except ValueError:
        raise AuthError("unknown role") from None
    name = _field(header, "name", str)
    if len(name) > MAX_NAME_CHARS:
        raise AuthError("name too long")
    return role, name, _nonce(header)


def parse_challenge(header: dict[str, Any]) -> bytes:
    return _nonce(header)


def parse_auth(header: dict[str, Any]) -> tuple[bytes, Any]:
    return _nonce(header), header.get("mac")


def parse_welcome(header: dict[str, Any]) -> tuple[int, Any]:
    return _field(header, "id", int), header.get("mac")


class NonceBook:
    """Server nonces issued and not yet redeemed (bounded, oldest forgotten first): each is redeemable once."""

    def __init__(self, capacity: int = 65536) -> None:
        self._open: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._capacity = capacity

    def issue(self) -> bytes:
        nonce = new_nonce()
        self._open[nonce] = None
        if len(self._open) > self._capacity:
            self._open.popitem(last=False)
        return nonce

    def forget(self, nonce: bytes) -> None:
        """Drop ``nonce`` if still open (its handshake ended without redeeming it): nothing is kept for it."""
        self._open.pop(nonce, None)

    def redeem(self, nonce: bytes) -> None:
        """Consume ``nonce``; :class:`AuthError` if it was never issued, already used, or forgotten."""
        if self._open.pop(nonce, 0) is not None:
            raise AuthError("unknown or replayed nonce")
