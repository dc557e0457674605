"""Errors raised by the wire: one small hierarchy, each class with a short machine-readable ``code``.

The ``code`` of the error that closes a connection travels to the peer in the ERROR frame (``{"code", "reason"}``), so
both ends log the same word. Errors about malformed peer input derive from :class:`ProtocolError`; a receiver that
catches ``WireError`` catches everything the wire raises on purpose.
"""
from __future__ import annotations


class WireError(Exception):
    """Base of every error the wire raises on purpose."""

    code = "wire"


class ProtocolError(WireError):
    """The peer broke the protocol (bad bytes, bad order, bad kind); the connection is closed with an ERROR frame."""

    code = "protocol"


class FrameError(ProtocolError, ValueError):
    """A malformed frame: bad magic, unsupported version, undecodable or non-plain msgpack header."""

    code = "frame"


class LimitError(ProtocolError, ValueError):
    """A declared length or count above its configured limit (refused before anything is allocated)."""

    code = "limit"


class VectorError(ProtocolError, ValueError):
    """A vector whose dtype, shape, chunking or blosc2 chunk does not match what the receiver expects."""

    code = "vector"


class MessageError(ProtocolError, ValueError):
    """A message whose header fields no honest peer would send: a field missing, of the wrong type, out of its bounds
    or too long (:mod:`wire.messages`, :mod:`wire.job`). ``kind`` and ``field`` say which."""

    code = "message"

    def __init__(self, kind: str, field: str, why: str) -> None:
        super().__init__(f"{kind.upper()} field {field!r} {why}")
        self.kind, self.field = kind, field


class RoleError(ProtocolError):
    """A message kind the peer's role may not send (e.g. an observer submitting a gradient)."""

    code = "role"


class AuthError(WireError):
    """Authentication failed: wrong token, replayed or unknown nonce, unsupported version, or an unknown role."""

    code = "auth"


class TokenError(WireError, ValueError):
    """No cluster token was given, it cannot be read, or it is too short."""

    code = "token"


class HeaderError(WireError, TypeError):
    """A header we were asked to send holds something other than str/int/float/bool/bytes/list/dict/None."""

    code = "header"


class WireTimeoutError(WireError, TimeoutError):
    """A named deadline passed: handshake, request, send (peer stopped reading) or idle (peer went silent)."""

    code = "timeout"


class ConnectionClosed(WireError, ConnectionError):
    """The connection is closed; ``reason`` says why (and ``remote_code`` what the peer said, if it said)."""

    code = "closed"

    def __init__(self, reason: str = "closed", remote_code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.remote_code = remote_code


class RemoteError(WireError):
    """The peer answered a request with an ERROR frame; ``remote_code`` and ``reason`` are what it sent."""

    code = "remote"

    def __init__(self, remote_code: str, reason: str) -> None:
        super().__init__(f"{remote_code}: {reason}")
        self.remote_code = remote_code
        self.reason = reason
