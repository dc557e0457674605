"""The sweep's progress view: a live line (rich) or plain lines, over the whole grid."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from shield_ps.sweep.runner import Progress


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def describe(progress: Progress) -> str:
    """One line: runs done of the grid, the current run and its step, the grid's ETA."""
    runs = f"runs {progress.done + progress.skipped}/{progress.total}"
    if progress.skipped:
        runs += f" ({progress.skipped} skipped: done before or infeasible)"
    if not progress.current:
        return f"{runs} · finished"
    return (f"{runs} · now {progress.current} step {progress.step}/{progress.steps} · "
            f"grid ETA {_clock(progress.eta_s)}")


@contextlib.contextmanager
def progress_view(console: Any, *, plain: bool) -> Iterator[Callable[[Progress], None]]:
    """A callable to give :class:`~shield_ps.sweep.runner.SweepRunner` as ``on_progress``. Plain mode prints a line
    when the current run changes and at most every 30 s otherwise; the live mode redraws one status line."""
    if plain:
        state: dict[str, Any] = {"run": None, "at": 0.0}

        def plain_update(progress: Progress) -> None:
            now = time.monotonic()
            if progress.current != state["run"] or now - float(state["at"]) >= 30.0:
                state["run"], state["at"] = progress.current, now
                console.print(describe(progress), highlight=False)

        yield plain_update
        return
    from rich.live import Live
    from rich.text import Text

    with Live(Text(""), console=console, refresh_per_second=2, transient=False) as live:
        yield lambda progress: live.update(Text(describe(progress)))
