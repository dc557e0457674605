"""What a connection hands its owner: :class:`Message`, plus the :class:`Timeouts` and :class:`Peer` it is made with."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from wire.codec import check_dest
from wire.digest import digest_bytes
from wire.errors import VectorError
from wire.frames import Frame

if TYPE_CHECKING:
    from wire.conn import Connection


@dataclass(frozen=True)
class Timeouts:
    """Named deadlines, in seconds."""

    handshake: float = 10.0  # HELLO .. WELCOME
    request: float = 60.0  # default for Connection.request
    send: float = 30.0  # a peer that takes nothing for this long (backpressure) is dropped
    idle: float = 60.0  # a peer that sends nothing (not even HEARTBEAT) for this long is dropped
    heartbeat: float = 10.0  # we send HEARTBEAT after this long without sending anything

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"Timeouts.{f.name} must be > 0")
        if self.heartbeat >= self.idle:
            raise ValueError("Timeouts.heartbeat must be shorter than Timeouts.idle")


@dataclass(frozen=True)
class Peer:
    """Who is on the other end, as established by the handshake."""

    role: str
    name: str
    id: int


class Message:
    """A received message. If ``vector`` is set its payload is still on the wire: the connection reads nothing else
    until you call :meth:`read_vector_into` or :meth:`discard` (do it promptly, or the idle deadline drops the peer)."""

    __slots__ = ("kind", "header", "id", "reply_to", "vector", "_conn", "_consumed")

    def __init__(self, frame: Frame, conn: Connection) -> None:
        self.kind, self.header, self.id = frame.kind, frame.header, frame.msg_id
        self.reply_to, self.vector = frame.reply_to, frame.vector
        self._conn = conn
        self._consumed = frame.vector is None

    def __repr__(self) -> str:
        return f"Message({self.kind.value}, id={self.id}, re={self.reply_to}, vector={self.vector is not None})"

    async def read_vector_into(self, dest: Any, *, digest: bool = True,
                               progress: Callable[[int], None] | None = None) -> bytes | None:
        """Receive the vector into ``dest`` (writable 1-D float32, exactly ``vector.n`` long, reused across steps) and
        return the BLAKE3-256 of its raw bytes (``None`` if not ``digest``). A wrong size or dtype raises
        :class:`VectorError` after discarding the payload (the connection stays usable); a corrupt chunk raises it
        and closes the connection. Cancelling this call closes the connection. ``progress(nbytes)`` is called (on the
        event loop) each time the first ``nbytes`` bytes of ``dest`` hold their final values, before the digest is
        known: a relay may forward them at once (:meth:`Connection.send_vector_as_filled`)."""
        if self.vector is None:
            raise VectorError(f"{self.kind.value} message carries no vector")
        if self._consumed:
            raise RuntimeError("vector already consumed")
        self._consumed = True
        conn = self._conn
        conn.check_open()
        try:
            view = check_dest(self.vector, dest)
        except VectorError:
            self._skip()
            raise
        if self.vector.nbytes == 0:  # nothing on the wire to wait for
            return digest_bytes(b"") if digest else None
        return await conn.receive_into(self.vector, view, digest=digest, progress=progress)

    def discard(self) -> None:
        """Skip this message's vector payload (no-op without one)."""
        if not self._consumed:
            self._consumed = True
            self._skip()

    def _skip(self) -> None:
        self._conn.discard_payload(sum(self.vector.sizes))  # type: ignore[union-attr]
