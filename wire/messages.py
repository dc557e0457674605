"""The step's messages (pure): one dataclass per header, ``.header()`` to send it, ``parse_*`` to read it.

Every header is hostile until its ``parse_*`` returned: a field missing, of the wrong type, out of bounds or too long
raises :class:`~wire.errors.MessageError` (a :class:`~wire.errors.ProtocolError`). What needs the receiver's state
(a file index below its f, a step it is in, a reason it accepts) is the receiver's check. On the wire::

    PS -> agent     STEP     {"step": t, "lr": x, "params_digest": 32 bytes[, "relay": {"worker", "host", "port",
                                                                                        "wait"}]}  + parameters
    agent -> PS     DIGESTS  {"step": t, "file": i, "digest": 32 bytes, "loss": x | None, "seconds": s}
    PS -> agent     FETCH    {"step": t, "file": i}                  (a request; the reply is VECTOR or ERROR)
    agent -> PS     VECTOR   {"step": t, "file": i}                  + the file's gradient
    agent -> relay  RELAY    {"step": t, "digest": 32 bytes, "wait": s}   (a request; reply VECTOR {"step": t})
    agent -> PS     RELAY    {"step": t, "reason": one of RELAY_REASONS}  (my relay failed me)
    either way      LEAVE    {"reason": text}
    either way      ERROR    {"code": word, "reason": text}       (a reply: the request cannot be answered)
    PS -> observer  EVENT    {"event": {...}}

SKETCH lives in :mod:`wire.sketch`, JOB in :mod:`wire.job`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire import fields
from wire.digest import DIGEST_SIZE
from wire.errors import MessageError

#: The longest wait a STEP's relay instruction or a relay request may ask for, seconds.
MAX_RELAY_WAIT_S = 900.0
#: Why a relay failed, as an agent's RELAY to the PS says it.
RELAY_REASONS = ("corrupt", "stalled", "unreachable", "refused")
#: The longest host name a relay instruction may carry.
MAX_HOST_CHARS = 255
#: The longest LEAVE reason read (a PS's reason names the failure that ended its run).
MAX_REASON_CHARS = 4096
#: A compute time above this (seconds per file) is no honest agent's.
MAX_SECONDS = 1e6
_MAX_FILE = fields.MAX_FILES - 1


@dataclass(frozen=True)
class RelayInstruction:
    """Where a STEP's parameters are to be taken from: worker ``worker``'s process at ``host:port``, within ``wait``
    seconds of the STEP."""

    worker: int
    host: str
    port: int
    wait: float

    def header(self) -> dict[str, Any]:
        return {"worker": self.worker, "host": self.host, "port": self.port, "wait": self.wait}


@dataclass(frozen=True)
class StepOrder:
    """STEP: compute step ``step`` (learning rate ``lr``) on the parameters whose BLAKE3 is ``params_digest``: sent
    with the message, or (``relay``) to be taken from another agent."""

    step: int
    lr: float
    params_digest: bytes | None
    relay: RelayInstruction | None = None

    def header(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "lr": self.lr, "params_digest": self.params_digest}
        if self.relay is not None:
            out["relay"] = self.relay.header()
        return out


@dataclass(frozen=True)
class DigestReport:
    """DIGESTS: the digest of one file's gradient, its mean loss (None: not finite) and its compute time."""

    step: int
    file: int
    digest: bytes
    loss: float | None
    seconds: float

    def header(self) -> dict[str, Any]:
        return {"step": self.step, "file": self.file, "digest": self.digest, "loss": self.loss,
                "seconds": self.seconds}


@dataclass(frozen=True)
class FetchRequest:
    """FETCH: send the payload of ``file`` computed for ``step``."""

    step: int
    file: int

    def header(self) -> dict[str, Any]:
        return {"step": self.step, "file": self.file}


@dataclass(frozen=True)
class VectorReply:
    """VECTOR's header: the payload of ``file`` of ``step`` (a FETCH reply), or of step ``step``'s parameters
    (``file`` None: a relay's reply)."""

    step: int
    file: int | None = None

    def header(self) -> dict[str, Any]:
        return {"step": self.step} if self.file is None else {"step": self.step, "file": self.file}


@dataclass(frozen=True)
class RelayRequest:
    """RELAY to a relay server: step ``step``'s parameters (BLAKE3 ``digest``), within ``wait`` seconds."""

    step: int
    digest: bytes
    wait: float

    def header(self) -> dict[str, Any]:
        return {"step": self.step, "digest": self.digest, "wait": self.wait}


@dataclass(frozen=True)
class RelayComplaint:
    """RELAY to the PS: this agent's relay failed it in ``step`` (``reason``: one of :data:`RELAY_REASONS`)."""

    step: int
    reason: str

    def header(self) -> dict[str, Any]:
        return {"step": self.step, "reason": self.reason}


@dataclass(frozen=True)
class Leave:
    """LEAVE: the sender ends the session, saying why."""

    reason: str

    def header(self) -> dict[str, Any]:
        return {"reason": self.reason}


@dataclass(frozen=True)
class ErrorReply:
    """ERROR in reply to a request: why it cannot be answered (``code`` a short word, ``reason`` for people). The
    connection reads a peer's ERROR leniently (:class:`~wire.errors.RemoteError`): it never fails on one."""

    code: str
    reason: str

    def header(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}


@dataclass(frozen=True)
class EventMessage:
    """EVENT: one event of the PS's run, as a plain map (its fields are the observer's to read)."""

    event: dict[str, Any]

    def header(self) -> dict[str, Any]:
        return {"event": self.event}


def parse_relay_instruction(value: object) -> RelayInstruction:
    """A STEP's ``relay`` field."""
    if type(value) is not dict:
        raise MessageError("step", "relay", "must be a map")
    kind = "step relay"
    return RelayInstruction(fields.integer(value, kind, "worker"),
                            fields.text(value, kind, "host", MAX_HOST_CHARS, min_chars=1),
                            fields.integer(value, kind, "port", 1, 65535),
                            fields.number(value, kind, "wait", 0.0, MAX_RELAY_WAIT_S, open_low=True))


def parse_step_order(header: dict[str, Any]) -> StepOrder:
    """A PS's STEP (agent side)."""
    relay = header.get("relay")
    return StepOrder(fields.integer(header, "step", "step"),
                     fields.number(header, "step", "lr", 0.0, float("inf")),
                     fields.optional_blob(header, "step", "params_digest", DIGEST_SIZE),
                     None if relay is None else parse_relay_instruction(relay))


def parse_digest_report(header: dict[str, Any]) -> DigestReport:
    """An agent's DIGESTS (PS side; the PS checks that the file is one the agent holds)."""
    return DigestReport(fields.integer(header, "digests", "step"),
                        fields.integer(header, "digests", "file", 0, _MAX_FILE),
                        fields.blob(header, "digests", "digest", DIGEST_SIZE),
                        fields.optional_number(header, "digests", "loss"),
                        fields.number(header, "digests", "seconds", 0.0, MAX_SECONDS, open_high=True))


def parse_fetch_request(header: dict[str, Any]) -> FetchRequest:
    """A PS's FETCH (agent side)."""
    return FetchRequest(fields.integer(header, "fetch", "step"), fields.integer(header, "fetch", "file", 0, _MAX_FILE))


def parse_vector_reply(header: dict[str, Any]) -> VectorReply:
    """A VECTOR's header."""
    return VectorReply(fields.integer(header, "vector", "step"),
                       fields.optional_integer(header, "vector", "file", 0, _MAX_FILE))


def parse_relay_request(header: dict[str, Any]) -> RelayRequest:
    """An agent's RELAY to a relay server."""
    return RelayRequest(fields.integer(header, "relay", "step"), fields.blob(header, "relay", "digest", DIGEST_SIZE),
                        fields.number(header, "relay", "wait", 0.0, MAX_RELAY_WAIT_S, open_low=True))


def parse_relay_complaint(header: dict[str, Any]) -> RelayComplaint:
    """An agent's RELAY to the PS."""
    step = fields.integer(header, "relay", "step")
    reason = header.get("reason")
    if type(reason) is not str or reason not in RELAY_REASONS:
        raise MessageError("relay", "reason", f"must be one of {', '.join(RELAY_REASONS)}")
    return RelayComplaint(step, reason)


def parse_leave(header: dict[str, Any]) -> Leave:
    """A LEAVE (no reason: the empty one)."""
    if header.get("reason") is None:
        return Leave("")
    return Leave(fields.text(header, "leave", "reason", MAX_REASON_CHARS))


def parse_event(header: dict[str, Any]) -> EventMessage:
    """An EVENT (observer side)."""
    return EventMessage(fields.mapping(header, "event", "event"))
