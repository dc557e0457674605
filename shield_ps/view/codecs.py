"""Which wire codec each direction used: read from a ``step`` event's ``codecs``, summed over the run, formatted.

A ``step`` event carries ``codecs: {"out": {codec: links}, "in": {codec: payloads}}`` (docs/metrics.md): how many
links the PS's broadcast went out on with each codec, and how many fetched payloads came in with each (``--codec
auto`` picks per link and direction, docs/wire.md). Older runs have no ``codecs``. The field is untrusted JSON like
every other, but it is only informative, so it is read leniently: a step without it, or with a shape this module does
not know, is no error (:func:`read_codecs` gives None or skips the odd entries) and never makes the event malformed.
Codec names are kept only when they are short and plain (a name ends up in a log line), and each direction keeps at
most :data:`MAX_CODECS` of them, so a hostile event cannot grow the view. All functions are pure.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

#: the two directions of a step's ``codecs``, in display order: the PS's broadcast, the payloads it fetched.
DIRECTIONS: tuple[str, ...] = ("out", "in")
#: what one count means in each direction, for the summary.
UNITS: Mapping[str, str] = {"out": "sends", "in": "payloads"}
#: how many codec names one direction keeps (per step and over the run); the rest of a run's go to :data:`OTHER`.
MAX_CODECS = 8
#: entries of one direction's map looked at (a hostile map may be huge; the fold must stay cheap).
MAX_ENTRIES = 32
#: the largest count believed for one codec in one step (more links or payloads than any run has).
MAX_COUNT = 1_000_000
#: the name that a run's codecs beyond :data:`MAX_CODECS` are counted under.
OTHER = "other"
#: what a codec name may look like (``none``, ``lz4``, ``zstd``, a future ``zstd-3``); anything else is skipped.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,15}")

#: (codec name, count) pairs, most used first (ties by name)
CodecCounts = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class CodecUse:
    """Codec counts per direction: one step's (links and payloads), or the sums over the steps the view saw."""

    out: CodecCounts = ()
    into: CodecCounts = ()  #: the ``in`` direction (``in`` is a Python keyword)
    steps: int = 1  #: how many steps with ``codecs`` these counts cover

    def direction(self, name: str) -> CodecCounts:
        """The counts of ``"out"`` or ``"in"``."""
        return self.out if name == "out" else self.into


def _ordered(counts: Mapping[str, int]) -> CodecCounts:
    return tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _read_direction(value: Any) -> CodecCounts:
    """One direction's ``{codec: count}``, keeping the plain names with counts in (0, MAX_COUNT]; () for odd shapes."""
    if not isinstance(value, dict):
        return ()
    counts: dict[str, int] = {}
    for name, count in islice(value.items(), MAX_ENTRIES):
        if not isinstance(name, str) or NAME.fullmatch(name) is None or name in counts:
            continue
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count <= MAX_COUNT:
            continue
        counts[name] = count
        if len(counts) == MAX_CODECS:
            break
    return _ordered(counts)


def read_codecs(event: Mapping[str, Any]) -> CodecUse | None:
    """The ``codecs`` of a ``step`` event, or None when it has none (an older run) or it is not a map. Never raises:
    a direction that is missing or not a map reads as empty, and odd entries in it are skipped."""
    value = event.get("codecs")
    if not isinstance(value, dict):
        return None
    return CodecUse(out=_read_direction(value.get("out")), into=_read_direction(value.get("in")))


def _merge(total: CodecCounts, step: CodecCounts) -> CodecCounts:
    """``total`` plus ``step``; names beyond :data:`MAX_CODECS` are counted under :data:`OTHER`."""
    counts = dict(total)
    for name, count in step:
        if name not in counts and len(counts) >= MAX_CODECS:
            name = OTHER
        counts[name] = counts.get(name, 0) + count
    return _ordered(counts)


def add(total: CodecUse | None, step: CodecUse | None) -> CodecUse | None:
    """The run's totals after one more step (``total`` unchanged when the step reported no codecs)."""
    if step is None:
        return total
    if total is None:
        return step
    return CodecUse(out=_merge(total.out, step.out), into=_merge(total.into, step.into), steps=total.steps + 1)


def _counts_text(counts: CodecCounts) -> str:
    return " ".join(f"{name}×{count}" for name, count in counts) or "-"


def step_text(use: CodecUse) -> str:
    """One step's codecs: ``out none×14 lz4×1 · in none×25`` (``-`` for a direction with none)."""
    return " · ".join(f"{direction} {_counts_text(use.direction(direction))}" for direction in DIRECTIONS)


def _share(part: int, whole: int) -> str:
    text = f"{100 * part / whole:.1f}"
    return (text[:-2] if text.endswith(".0") else text) + "%"


def shares_text(total: CodecUse) -> str:
    """A run's codecs as shares of each direction: ``out none 93.3% lz4 6.7% (1500 sends) · in none 100% (600
    payloads)`` (``-`` for a direction with none)."""
    parts = []
    for direction in DIRECTIONS:
        counts = total.direction(direction)
        whole = sum(count for _, count in counts)
        if not whole:
            parts.append(f"{direction} -")
            continue
        shares = " ".join(f"{name} {_share(count, whole)}" for name, count in counts)
        parts.append(f"{direction} {shares} ({whole} {UNITS[direction]})")
    return " · ".join(parts)
