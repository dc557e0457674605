"""Numbers for people: money with significant digits, durations and times in human units (the JSON keeps raw
values; tables and messages use these)."""
from __future__ import annotations

import datetime as dt
import math
import time


def sig(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits, without an exponent for everyday magnitudes."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    magnitude = math.floor(math.log10(abs(value)))
    if -5 <= magnitude < 9:
        decimals = max(0, digits - 1 - magnitude)
        return f"{value:.{decimals}f}"
    return f"{value:.{digits - 1}e}"


def usd(value: float | None, digits: int = 3) -> str:
    """Money: whole cents from a dollar up, else ``digits`` significant digits (``$0.0000123``); ``-`` if unknown."""
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${sig(value, digits)}"


def duration(seconds: float | None) -> str:
    """``45s``, ``12m 05s``, ``3h 07m``, ``2d 04h``; ``-`` if unknown."""
    if seconds is None:
        return "-"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def ago(stamp: float | None, now: float | None = None) -> str:
    """How long before ``now`` a UNIX time was: ``12s ago``."""
    if stamp is None:
        return "-"
    return f"{duration((now if now is not None else time.time()) - stamp)} ago"


def when(stamp: float | None) -> str:
    """A UNIX time as ``2026-12-06 06:03 UTC``."""
    if stamp is None:
        return "-"
    return dt.datetime.fromtimestamp(stamp, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def percent(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"
