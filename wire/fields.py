"""Checks of single header fields (pure), shared by the typed messages (:mod:`wire.messages`, :mod:`wire.job`).

Each reads one key of a decoded header (plain msgpack values only: see :mod:`wire.frames`) and returns it typed, or
raises :class:`~wire.errors.MessageError` naming the message kind and the field. ``bool`` is never an integer here,
and a missing key is the same error as a wrong value: no ``KeyError`` or ``TypeError`` leaves this module.
"""
from __future__ import annotations

import math
from typing import Any

from wire.errors import MessageError

#: The largest integer a header may carry (msgpack's signed 64-bit range; steps, ids and seeds stay below it).
MAX_INT = (1 << 63) - 1
#: File indexes are below this (the SKETCH limit: f is at most 65536).
MAX_FILES = 1 << 16
_ABSENT = object()


def integer(header: dict[str, Any], kind: str, key: str, low: int = 0, high: int = MAX_INT) -> int:
    """``header[key]``: an int (not a bool) in ``low..high``."""
    value = header.get(key, _ABSENT)
    if type(value) is not int or not low <= value <= high:
        raise MessageError(kind, key, f"must be an integer in {low}..{high}")
    return value


def optional_integer(header: dict[str, Any], kind: str, key: str, low: int = 0, high: int = MAX_INT) -> int | None:
    """``header[key]`` as :func:`integer`, or None when the key is absent or null."""
    return None if header.get(key) is None else integer(header, kind, key, low, high)


def number(header: dict[str, Any], kind: str, key: str, low: float, high: float, *,
           open_low: bool = False, open_high: bool = False) -> float:
    """``header[key]``: a finite int or float (not a bool) within ``low..high`` (either end open on request)."""
    value = header.get(key, _ABSENT)
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        raise MessageError(kind, key, "must be a finite number")
    assert isinstance(value, (int, float))
    if value < low or value > high or (open_low and value == low) or (open_high and value == high):
        lo, hi = "(" if open_low else "[", ")" if open_high else "]"
        raise MessageError(kind, key, f"must be in {lo}{low}, {high}{hi}")
    return float(value)


def optional_number(header: dict[str, Any], kind: str, key: str, low: float = -math.inf,
                    high: float = math.inf) -> float | None:
    """``header[key]`` as :func:`number` (closed bounds), or None when absent or null."""
    return None if header.get(key) is None else number(header, kind, key, low, high)


def text(header: dict[str, Any], kind: str, key: str, max_chars: int, *, min_chars: int = 0) -> str:
    """``header[key]``: a str of ``min_chars..max_chars`` characters."""
    value = header.get(key, _ABSENT)
    if type(value) is not str or not min_chars <= len(value) <= max_chars:
        raise MessageError(kind, key, f"must be text of {min_chars}..{max_chars} characters")
    return value


def blob(header: dict[str, Any], kind: str, key: str, size: int) -> bytes:
    """``header[key]``: exactly ``size`` bytes."""
    value = header.get(key, _ABSENT)
    if type(value) is not bytes or len(value) != size:
        raise MessageError(kind, key, f"must be {size} bytes")
    return value


def optional_blob(header: dict[str, Any], kind: str, key: str, size: int) -> bytes | None:
    """``header[key]`` as :func:`blob`, or None when absent or null."""
    return None if header.get(key) is None else blob(header, kind, key, size)


def mapping(header: dict[str, Any], kind: str, key: str) -> dict[str, Any]:
    """``header[key]``: a map (its keys are str: the frame parser refuses any other)."""
    value = header.get(key, _ABSENT)
    if type(value) is not dict:
        raise MessageError(kind, key, "must be a map")
    return value


def hex_digest(header: dict[str, Any], kind: str, key: str) -> str | None:
    """``header[key]``: None (absent or null) or 64 lower-case hex characters (a plug-in's identity)."""
    value = header.get(key)
    if value is None:
        return None
    if type(value) is not str or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise MessageError(kind, key, "must be 64 lower-case hex characters")
    return value
