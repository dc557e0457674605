"""The run's event stream: one place every event goes through (see docs/metrics.md for the format).

:class:`EventSink` appends each event to ``RUN/metrics.jsonl`` (one JSON object per line, flushed) and hands it to
subscribers (the terminal view, observers). Subscribers must be cheap and non-blocking: they are called on the
step loop's thread.
"""
from __future__ import annotations

import enum
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, TextIO

log = logging.getLogger(__name__)

Event = dict[str, Any]


class WorkerState(str, enum.Enum):
    """A worker's state in ``worker`` events (docs/metrics.md). ``unknown`` is never emitted: it is what a view
    shows for a worker it has not heard of yet."""

    UNKNOWN = "unknown"
    CONNECTED = "connected"
    COMPUTING = "computing"
    DONE = "done"
    LATE = "late"
    ERASED = "erased"
    LEFT = "left"
Subscriber = Callable[[Event], None]


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class EventSink:
    """Fan-out of run events to ``metrics.jsonl`` and subscribers."""

    def __init__(self, metrics_path: Path | None) -> None:
        self._file: TextIO | None = None
        if metrics_path is not None:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(metrics_path, "a", encoding="utf-8")
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber) if subscriber in self._subscribers else None

    def emit(self, kind: str, **fields: Any) -> Event:
        event: Event = _clean({"kind": kind, "time": time.time(), **fields})
        if self._file is not None:
            self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
            self._file.flush()
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:  # a broken view or watcher must never stop training
                log.exception("event subscriber failed; removing it")
                self._subscribers.remove(subscriber)
        return event

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_events(path: Path) -> list[Event]:
    """Read a ``metrics.jsonl``; a torn last line (a killed run) is ignored."""
    events: list[Event] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping a torn line in %s", path)
    return events
