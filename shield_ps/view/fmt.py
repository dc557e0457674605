"""Small text formatters shared by the live view, the plain log lines and the summary."""
from __future__ import annotations

from collections.abc import Iterable


def duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``-:--:--`` when unknown)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-:--:--"
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.2f}%"


def num(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def lr(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def ms(seconds: float | None) -> str:
    """Milliseconds with about three significant digits."""
    if seconds is None:
        return "-"
    value = 1000 * seconds
    return f"{value:.0f} ms" if value >= 100 else f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms"


def ids(values: Iterable[int], limit: int = 12) -> str:
    """``3,7,11`` (``-`` when empty), cut after ``limit`` ids with a count of the rest."""
    items = list(values)
    if not items:
        return "-"
    head = ",".join(str(v) for v in items[:limit])
    return head if len(items) <= limit else f"{head},+{len(items) - limit}"
