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
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

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
        self.write_error: str | None = None  # the first failure to write metrics.jsonl (e.g. a full disk)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; returns a function that removes it."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber) if subscriber in self._subscribers else None

    def emit(self, kind: str, **fields: Any) -> Event:
        event: Event = _clean({"kind": kind, "time": time.time(), **fields})
        if self._file is not None:
            try:
                self._file.write(json.dumps(event, separators=(",", ":")) + "\n")
                self._file.flush()
            except OSError as exc:  # a full disk must not stop training; it is reported, once, and in the summary
                if self.write_error is None:
                    self.write_error = f"{type(exc).__name__}: {exc}"
                    log.error("metrics.jsonl can no longer be written (%s): events go on to the view only",
                              self.write_error)
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


def effective_events(events: list[Event]) -> list[Event]:
    """The events that still stand after resumes: a ``job`` event with ``resumed`` true and ``start_step`` S
    supersedes every earlier ``step``, ``eval`` and ``checkpoint`` event of a step >= S (those steps were run
    again), so no step is counted twice (docs/metrics.md)."""
    kept: list[Event] = []
    for event in events:
        if event.get("kind") == "job" and event.get("resumed") and isinstance(event.get("start_step"), int):
            start = event["start_step"]
            kept = [e for e in kept if not (e.get("kind") in _STEPPED and isinstance(e.get("step"), int)
                                            and e["step"] >= start + (e.get("kind") != "step"))]
        kept.append(event)
    return kept


_STEPPED = ("step", "eval", "checkpoint")


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
