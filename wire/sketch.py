"""SKETCH messages (pure): the commit-then-sketch round of a step, header builders and validating parsers.

After every digest of step t is in (the commitment), the PS sends each holder of a disputed file one SKETCH::

    PS -> agent   SKETCH {"step": t, "seed": 32 random bytes, "files": [file, ...], "rows": k, "width": c}

and the agent answers with one SKETCH per file, as each is ready (not a reply: like DIGESTS)::

    agent -> PS   SKETCH {"step": t, "file": i, "sketch": k*c float64 little-endian bytes | None, "norm": float | None}

``sketch`` is None (and ``norm`` None) when the agent's gradient for that file is not finite. No vector payload: a
sketch is small (64 KiB at the default k = 256, c = 32) and travels in the header, whose size is capped by
:class:`wire.Limits`. Every field is checked here before anything else looks at it; a bad one raises
:class:`SketchHeaderError` (the receiver drops the sender).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeGuard

from wire.errors import ProtocolError

SEED_SIZE = 32
MAX_ROWS = 1024
MAX_WIDTH = 1024
#: Largest sketch accepted, in bytes (fits well inside the default 256 KiB header cap).
MAX_SKETCH_BYTES = 192 * 1024
MAX_FILES = 1 << 16
_MAX_STEP = (1 << 63) - 1


class SketchHeaderError(ProtocolError, ValueError):
    """A SKETCH header that no honest peer would send."""

    code = "sketch"


@dataclass(frozen=True)
class SketchRequest:
    """What the PS asks of one agent: sketches of ``files`` of ``step`` under ``seed``, shape ``(rows, width)``."""

    step: int
    seed: bytes
    files: tuple[int, ...]
    rows: int
    width: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.width * 8

    def header(self) -> dict[str, Any]:
        return {"step": self.step, "seed": self.seed, "files": list(self.files), "rows": self.rows,
                "width": self.width}


@dataclass(frozen=True)
class SketchAnswer:
    """One agent's sketch of one file: raw float64 bytes (or None: its gradient is not finite) and its L2 norm."""

    step: int
    file: int
    sketch: bytes | None
    norm: float | None

    def header(self) -> dict[str, Any]:
        return {"step": self.step, "file": self.file, "sketch": self.sketch, "norm": self.norm}


def is_plain_number(value: object) -> TypeGuard[int | float]:
    """Whether a decoded header value is a plain int or float (not a bool, not a subclass)."""
    return type(value) in (int, float)


def _int(header: dict[str, Any], key: str, low: int, high: int) -> int:
    value = header.get(key)
    if type(value) is not int or not low <= value <= high:
        raise SketchHeaderError(f"SKETCH field {key!r} must be an integer in {low}..{high}")
    return value


def parse_sketch_request(header: dict[str, Any], num_files: int) -> SketchRequest:
    """Validate a PS's SKETCH (agent side); ``num_files`` is the job's f."""
    step = _int(header, "step", 0, _MAX_STEP)
    seed = header.get("seed")
    if type(seed) is not bytes or len(seed) != SEED_SIZE:
        raise SketchHeaderError(f"SKETCH seed must be {SEED_SIZE} bytes")
    files = header.get("files")
    if type(files) is not list or not 1 <= len(files) <= MAX_FILES:
        raise SketchHeaderError("SKETCH files must be a non-empty list")
    if any(type(f) is not int or not 0 <= f < num_files for f in files) or len(set(files)) != len(files):
        raise SketchHeaderError(f"SKETCH files must be distinct integers in 0..{num_files - 1}")
    rows, width = _int(header, "rows", 8, MAX_ROWS), _int(header, "width", 1, MAX_WIDTH)
    if rows % 8 or rows * width * 8 > MAX_SKETCH_BYTES:
        raise SketchHeaderError(f"SKETCH shape {rows}x{width} is not a multiple of 8 rows within "
                                f"{MAX_SKETCH_BYTES} bytes")
    return SketchRequest(step, seed, tuple(files), rows, width)


def parse_sketch_answer(header: dict[str, Any], num_files: int, nbytes: int) -> SketchAnswer:
    """Validate an agent's SKETCH (PS side): ``nbytes`` is the size the PS asked for. The float64 values themselves
    are checked for NaN/Inf by the caller (``wire`` holds no numpy)."""
    step = _int(header, "step", 0, _MAX_STEP)
    file = _int(header, "file", 0, max(0, num_files - 1))
    sketch, norm = header.get("sketch"), header.get("norm")
    if sketch is None:
        if norm is not None:
            raise SketchHeaderError("a SKETCH without a sketch carries no norm")
        return SketchAnswer(step, file, None, None)
    if type(sketch) is not bytes or len(sketch) != nbytes:
        raise SketchHeaderError(f"SKETCH sketch must be {nbytes} bytes")
    if not is_plain_number(norm) or not math.isfinite(norm) or norm < 0:
        raise SketchHeaderError("SKETCH norm must be a finite number >= 0")
    return SketchAnswer(step, file, sketch, float(norm))
