"""Readers of untrusted event fields: each returns a typed value or raises :class:`BadEvent` (pure functions).

Events may come from a remote PS or a hand-edited ``metrics.jsonl``, so every field is checked: types, finiteness,
ranges, and worker ids below :data:`MAX_WORKERS` (a hostile event must not make a view allocate a huge table).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: worker ids above this are refused.
MAX_WORKERS = 4096

#: (worker id, count over the run) pairs sorted by id; the count is None when the source gave only ids
WorkerCounts = tuple[tuple[int, "int | None"], ...]


class BadEvent(ValueError):
    """An event field is missing or of the wrong type (internal: fold turns it into ``malformed += 1``)."""


def number(event: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
    """A finite number as a float, or None."""
    value = event.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadEvent(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def integer(event: Mapping[str, Any], key: str, default: int | None = None) -> int:
    """An integer (a bool is not one)."""
    value = event.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadEvent(f"{key}: expected an integer, got {value!r}")
    return value


def count(event: Mapping[str, Any], key: str, default: int | None = 0) -> int:
    """An integer >= 0."""
    value = integer(event, key, default)
    if value < 0:
        raise BadEvent(f"{key}: expected a count >= 0, got {value}")
    return value


def string(event: Mapping[str, Any], key: str, default: str = "?") -> str:
    """Any value as text, cut to 64 characters (``default`` when absent or null)."""
    value = event.get(key, default)
    if value is None:
        return default
    return str(value)[:64]


def worker_ids(event: Mapping[str, Any], key: str) -> tuple[int, ...]:
    """A list of worker ids, sorted and without repeats (empty when absent or null)."""
    value = event.get(key) or ()
    if not isinstance(value, (list, tuple)) or len(value) > MAX_WORKERS:
        raise BadEvent(f"{key}: expected a list of worker ids")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_WORKERS for v in value):
        raise BadEvent(f"{key}: worker ids must be integers in [0, {MAX_WORKERS})")
    return tuple(sorted(set(value)))


def opt_count(event: Mapping[str, Any], key: str) -> int | None:
    """A count, or None when absent or null (a field an older PS did not report)."""
    return None if event.get(key) is None else count(event, key)


def text(event: Mapping[str, Any], key: str, limit: int = 200) -> str | None:
    """Any value as text cut to ``limit`` characters, or None."""
    value = event.get(key)
    return None if value is None else str(value)[:limit]


def count_map(event: Mapping[str, Any], key: str) -> WorkerCounts:
    """A summary's ``{"3": 12, ...}`` (worker id as a string -> count) as sorted (id, count) pairs."""
    value = event.get(key)
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_WORKERS:
        raise BadEvent(f"{key}: expected a map of worker id -> count")
    counts: dict[int, int | None] = {}
    for worker in value:
        if not (isinstance(worker, str) and worker.isascii() and worker.isdigit() and len(worker) <= 4) \
                or int(worker) >= MAX_WORKERS:
            raise BadEvent(f"{key}: worker ids must be integers in [0, {MAX_WORKERS})")
        counts[int(worker)] = count(value, worker)
    return tuple(sorted(counts.items()))
