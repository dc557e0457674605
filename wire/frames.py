"""Frames: pure encode/parse functions over bytes (no sockets), with every peer-supplied size capped.

A frame is ``PREFIX`` (20 bytes, little-endian: magic ``b"SHLD"``, protocol version u8, flags u8 = 0, reserved u16 = 0,
header length u32, payload length u64), then a msgpack header, then the raw payload. The header is a map::

    {"k": kind.value, "i": request id (optional), "r": id replied to (optional), "h": {user fields}, "v": vector desc}

Only plain types are allowed in it (str, int, float, bool, bytes, list, dict, None; no ext types, no timestamps);
unknown top-level keys are refused. A payload is only allowed on a kind in :data:`VECTOR_KINDS` and only together with
a vector descriptor (``"v"``, see :class:`wire.codec.VectorDesc`) whose chunk sizes add up to the payload length.
Every length is checked against :class:`Limits` before anything is allocated for it.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, fields
from typing import Any

import msgpack

from wire.codec import VectorDesc
from wire.errors import FrameError, HeaderError, LimitError

MAGIC = b"SHLD"
PROTOCOL_VERSION = 1
PREFIX = struct.Struct("<4sBBHIQ")
PREFIX_SIZE = PREFIX.size  # 20
_MAX_ID = (1 << 63) - 1
_MAX_DEPTH = 32


class Kind(str, enum.Enum):
    """Message kinds; the value is what travels in the header's ``"k"``."""

    HELLO = "hello"
    CHALLENGE = "challenge"
    AUTH = "auth"
    WELCOME = "welcome"
    JOB = "job"
    STEP = "step"
    DIGESTS = "digests"
    FETCH = "fetch"
    VECTOR = "vector"
    HEARTBEAT = "heartbeat"
    LEAVE = "leave"
    ERROR = "error"
    SUBSCRIBE = "subscribe"
    EVENT = "event"
    SKETCH = "sketch"  # PS -> agent: the step's revealed seed and files; agent -> PS: one sketch per file
    RELAY = "relay"  # agent -> relay: the step's parameters, please; agent -> PS: my relay failed, send them directly


#: Kinds that may carry a vector payload (parameters in STEP, gradients in VECTOR).
VECTOR_KINDS = frozenset({Kind.STEP, Kind.VECTOR})
_KINDS = {k.value: k for k in Kind}


@dataclass(frozen=True)
class Limits:
    """Caps on everything a peer can declare; the defaults are safe for ResNet-sized (45 MB) vectors."""

    max_header_bytes: int = 256 * 1024
    handshake_header_bytes: int = 4096  # before authentication
    max_payload_bytes: int = 512 * 1024 * 1024
    max_vector_elems: int = 128 * 1024 * 1024
    max_chunks: int = 4096
    max_chunk_elems: int = 16 * 1024 * 1024
    max_container_items: int = 65536  # per msgpack array/map/str/bin
    max_inbox: int = 64  # undelivered messages before we stop reading
    max_write_buffer: int = 8 * 1024 * 1024  # outbound high-water mark (backpressure above it)
    max_connections: int = 1024  # per server
    max_preauth: int = 128  # connections still in their handshake, per server
    max_preauth_per_host: int = 32  # of those, from one source address

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"Limits.{f.name} must be a positive int, got {value!r}")
        if self.handshake_header_bytes > self.max_header_bytes:
            raise ValueError("Limits.handshake_header_bytes must not exceed max_header_bytes")


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed frame header; the payload (if any, ``payload_len`` bytes) follows it on the wire."""

    kind: Kind
    header: dict[str, Any]
    msg_id: int | None = None
    reply_to: int | None = None
    vector: VectorDesc | None = None
    payload_len: int = 0


def encode_frame(kind: Kind, header: dict[str, Any] | None = None, *, msg_id: int | None = None,
                 reply_to: int | None = None, vector: VectorDesc | None = None,
                 limits: Limits | None = None) -> bytes:
    """Prefix + msgpack header of one frame (the caller writes the vector chunks after it)."""
    kind = Kind(kind)
    if vector is not None and kind not in VECTOR_KINDS:
        raise HeaderError(f"{kind.value} cannot carry a vector")
    obj: dict[str, Any] = {"k": kind.value, "h": {} if header is None else header}
    if msg_id is not None:
        obj["i"] = msg_id
    if reply_to is not None:
        obj["r"] = reply_to
    payload_len = 0
    if vector is not None:
        obj["v"] = vector.to_wire()
        payload_len = sum(vector.sizes)
    if type(obj["h"]) is not dict:
        raise HeaderError("header must be a dict")
    try:
        _check_plain(obj["h"])
    except FrameError as exc:
        raise HeaderError(str(exc)) from None
    try:
        packed = msgpack.packb(obj, use_bin_type=True, strict_types=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise HeaderError(f"header holds a non-plain value: {exc}") from None
    cap = (limits or Limits()).max_header_bytes
    if len(packed) > cap:
        raise HeaderError(f"header of {len(packed)} bytes exceeds {cap}")
    return PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 0, len(packed), payload_len) + packed


def parse_prefix(data: bytes | bytearray | memoryview, limits: Limits,
                 header_cap: int | None = None) -> tuple[int, int]:
    """``(header_len, payload_len)`` from the first :data:`PREFIX_SIZE` bytes; raises before anything is allocated."""
    if len(data) < PREFIX_SIZE:
        raise FrameError("truncated prefix")
    magic, version, flags, reserved, header_len, payload_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise FrameError("bad magic (not a shield frame)")
    if version != PROTOCOL_VERSION:
        raise FrameError(f"unsupported frame version {version}")
    if flags or reserved:
        raise FrameError("nonzero reserved prefix bits")
    cap = limits.max_header_bytes if header_cap is None else header_cap
    if header_len == 0:
        raise FrameError("empty header")
    if header_len > cap:
        raise LimitError(f"declared header of {header_len} bytes exceeds {cap}")
    if payload_len > limits.max_payload_bytes:
        raise LimitError(f"declared payload of {payload_len} bytes exceeds {limits.max_payload_bytes}")
    return header_len, payload_len


def _refuse_ext(code: int, data: bytes) -> Any:
    raise FrameError(f"msgpack ext type {code} refused")


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise FrameError("header nested too deeply")
    t = type(value)
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise FrameError("header map keys must be str")
            _check_plain(item, depth + 1)
    elif t is list:
        for item in value:
            _check_plain(item, depth + 1)
    elif t not in (str, int, float, bool, bytes) and value is not None:
        raise FrameError(f"header holds a {t.__name__}")


def _unpack(data: bytes | bytearray | memoryview, limits: Limits) -> Any:
    n = limits.max_container_items
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext, use_list=True,
                               max_str_len=len(data), max_bin_len=len(data), max_array_len=n, max_map_len=n,
                               max_ext_len=0)
    except FrameError:
        raise
    except Exception as exc:  # msgpack raises many types (ExtraData, StackError, UnicodeDecodeError, ...)
        raise FrameError(f"undecodable header: {type(exc).__name__}") from None


def _opt_id(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= _MAX_ID:
        raise FrameError(f"bad {key!r} field")
    return value


def parse_header(data: bytes | bytearray | memoryview, payload_len: int, limits: Limits) -> Frame:
    """Decode and validate one msgpack header (``payload_len`` is what the prefix declared)."""
    obj = _unpack(data, limits)
    if type(obj) is not dict:
        raise FrameError("header is not a map")
    _check_plain(obj)
    if not obj.keys() <= {"k", "i", "r", "h", "v"}:
        raise FrameError("unknown header field")
    k = obj.get("k")
    kind = _KINDS.get(k) if type(k) is str else None
    if kind is None:
        raise FrameError("unknown message kind")
    header = obj.get("h", {})
    if type(header) is not dict:
        raise FrameError("'h' is not a map")
    vector = None
    if "v" in obj:
        if kind not in VECTOR_KINDS:
            raise FrameError(f"{kind.value} cannot carry a vector")
        vector = VectorDesc.from_wire(obj["v"], payload_len, limits)
    elif payload_len:
        raise FrameError("payload without a vector descriptor")
    return Frame(kind, header, _opt_id(obj, "i"), _opt_id(obj, "r"), vector, payload_len)


def parse_frame(data: bytes | bytearray | memoryview, limits: Limits | None = None) -> tuple[Frame, memoryview]:
    """Parse one complete frame held in ``data`` (tests, tools): ``(frame, payload view)``; refuses trailing bytes."""
    limits = limits or Limits()
    view = memoryview(data).cast("B")
    header_len, payload_len = parse_prefix(view[:PREFIX_SIZE], limits)
    end = PREFIX_SIZE + header_len + payload_len
    if len(view) < end:
        raise FrameError("truncated frame")
    if len(view) > end:
        raise FrameError("trailing bytes after frame")
    frame = parse_header(view[PREFIX_SIZE:PREFIX_SIZE + header_len], payload_len, limits)
    return frame, view[PREFIX_SIZE + header_len:end]
