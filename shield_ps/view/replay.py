"""Reading ``RUN/metrics.jsonl`` back: for plots, for tests and for viewing a finished run.

A resumed run's file holds the steps it ran again twice; :func:`iter_events` gives the events that still stand
(:func:`shield_ps.events.effective_events`: a resumed ``job`` event supersedes the earlier step, eval and checkpoint
events of the steps it runs again), so a replay or a plot counts every step once.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shield_ps.errors import ViewError
from shield_ps.events import effective_events, read_events

METRICS_FILE = "metrics.jsonl"


def metrics_path(run: str | Path) -> Path:
    """``RUN/metrics.jsonl`` for a run directory, or the path itself for a file; ViewError when absent."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise ViewError(f"no run metrics at {path} (expected a run directory or a metrics.jsonl file)")
    return path


def iter_events(run: str | Path) -> Iterator[dict[str, Any]]:
    """The events (JSON objects) of a run that still stand after its resumes, in file order; a torn last line is
    skipped."""
    path = metrics_path(run)
    try:
        events = read_events(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ViewError(f"cannot read {path}: {exc}") from None
    return iter(effective_events([event for event in events if isinstance(event, dict)]))


def replay_file(run: str | Path, view: Any) -> int:
    """Publish every event of a run into ``view`` (anything with ``publish(event)``); returns how many."""
    count = 0
    for event in iter_events(run):
        view.publish(event)
        count += 1
    return count
