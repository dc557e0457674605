"""Reading ``RUN/metrics.jsonl`` back: for plots, for tests and for viewing a finished run."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from shield_ps.errors import ViewError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
MAX_LINE = 1 << 20  #: longer lines are skipped (no event is near this size)


def metrics_path(run: str | Path) -> Path:
    """``RUN/metrics.jsonl`` for a run directory, or the path itself for a file; ViewError when absent."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise ViewError(f"no run metrics at {path} (expected a run directory or a metrics.jsonl file)")
    return path


def iter_events(run: str | Path) -> Iterator[dict[str, Any]]:
    """The events of a run in file order. Lines that are not JSON objects (e.g. a last line cut short by a crash)
    are skipped with a warning."""
    path = metrics_path(run)
    skipped = 0
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if len(line) > MAX_LINE or not line.strip():
                    skipped += bool(line.strip())
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    skipped += 1
                    continue
                if isinstance(event, dict):
                    yield event
                else:
                    skipped += 1
    except OSError as exc:
        raise ViewError(f"cannot read {path}: {exc.strerror or exc}") from None
    if skipped:
        log.warning("%s: skipped %d line(s) that are not JSON events", path, skipped)


def replay_file(run: str | Path, view: Any) -> int:
    """Publish every event of a finished (or running) run into ``view``; returns how many were published."""
    count = 0
    for event in iter_events(run):
        view.publish(event)
        count += 1
    return count
