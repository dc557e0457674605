"""The view sink: the PS (or a watcher) publishes every run event here; the view never blocks the publisher.

``publish(event)`` folds the event into the immutable view state under a short lock (microseconds) and, when the
event makes a log line, appends it to a bounded queue. One daemon thread owned by the view does all terminal output:
it wakes at ``refresh_hz`` (live) or when a line is queued (plain, quiet), prints the queued lines and redraws the live
panel from the latest state. A slow terminal therefore delays only that thread; when the queue is full, lines are
dropped and counted, never waited for.
"""
from __future__ import annotations

import argparse
import enum
import logging
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from shield_ps.view.live import LivePanel
from shield_ps.view.plain import StartupLines, format_event
from shield_ps.view.state import EventKind, ViewState, event_kind, fold
from shield_ps.view.summary import render_summary, summary_lines

log = logging.getLogger(__name__)


class ViewMode(str, enum.Enum):
    LIVE = "live"  #: rich live panel redrawn in place (interactive terminals)
    PLAIN = "plain"  #: one plain line per step/event (CI, files, ``--plain``)
    QUIET = "quiet"  #: only evaluations, failed checkpoint writes and the final summary (``--quiet``)


@dataclass(frozen=True)
class _ModeSpec:
    live: bool
    line_kinds: frozenset[EventKind]  #: kinds whose log line is printed (above the panel in live mode)


_MODES: dict[ViewMode, _ModeSpec] = {
    ViewMode.LIVE: _ModeSpec(live=True, line_kinds=frozenset({EventKind.EVAL, EventKind.CHECKPOINT})),
    ViewMode.PLAIN: _ModeSpec(live=False, line_kinds=frozenset(EventKind)),
    ViewMode.QUIET: _ModeSpec(live=False, line_kinds=frozenset({EventKind.EVAL, EventKind.CHECKPOINT})),
}


def choose_mode(*, plain: bool = False, quiet: bool = False, stream: TextIO | None = None) -> ViewMode:
    """``--quiet`` wins, then ``--plain``; otherwise live on an interactive terminal and plain anywhere else."""
    if quiet:
        return ViewMode.QUIET
    stream = sys.stdout if stream is None else stream
    interactive = hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM", "") != "dumb"
    return ViewMode.LIVE if interactive and not plain else ViewMode.PLAIN


def _default_console(mode: ViewMode) -> Console:
    if _MODES[mode].live:
        return Console()
    return Console(soft_wrap=True, highlight=False, emoji=False, markup=False)


class _LogHandler(logging.Handler):
    """Logging into the view's queue, so log records neither block the caller nor tear the live panel."""

    def __init__(self, view: View, level: int) -> None:
        super().__init__(level)
        self._view = view

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._view.post_line(self.format(record))
        except Exception:  # noqa: BLE001 - logging's contract: a handler reports its own failures
            self.handleError(record)


class View:
    """A terminal view of one run. Thread-safe ``publish``; ``start``/``close`` from the owner; ``close`` idempotent."""

    def __init__(self, mode: ViewMode, console: Console | None = None, *, refresh_hz: float = 4.0,
                 backlog: int = 10_000) -> None:
        if not refresh_hz > 0 or backlog < 1:
            raise ValueError("refresh_hz must be > 0 and backlog >= 1")
        self.mode = mode
        self.console = console if console is not None else _default_console(mode)
        self._spec = _MODES[mode]
        self._period = 1.0 / refresh_hz
        self._backlog = backlog
        self._state = ViewState()
        self._fold_lock = threading.Lock()
        self._queue: deque[tuple[Any, ViewState] | str] = deque()
        self._dropped = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._closed = False
        self._drawn: ViewState | None = None  #: the state the live panel last showed
        self._drawn_at = 0.0
        self._startup = StartupLines() if mode is ViewMode.PLAIN else None  #: thins the lines before step 1

    @property
    def state(self) -> ViewState:
        """The latest view state (immutable; safe to read from any thread)."""
        return self._state

    def start(self) -> None:
        """Start the output thread (and the live panel in live mode). Call once, before or after publishing."""
        if self._thread is not None or self._closed:
            return
        if self._spec.live:
            self._live = Live(console=self.console, get_renderable=lambda: LivePanel(self._state),
                              auto_refresh=False, transient=False, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        self._thread = threading.Thread(target=self._pump, name="shield-view", daemon=True)
        self._thread.start()

    def publish(self, event: dict[str, Any]) -> None:
        """Take one run event (``docs/metrics.md``): cheap, non-blocking; a malformed one is counted, not raised."""
        with self._fold_lock:
            before = self._state
            after = fold(before, event)
            self._state = after
        if after.malformed == before.malformed and event_kind(event) in self._spec.line_kinds:
            self._enqueue((event, after))

    def post_line(self, line: str) -> None:
        """Queue one free text line (a log record, a notice); printed above the live panel or in sequence."""
        self._enqueue(line)

    def log_handler(self, level: int = logging.INFO) -> logging.Handler:
        """A logging handler that prints through this view (use it while the live panel is on screen)."""
        handler = _LogHandler(self, level)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        return handler

    def close(self) -> None:
        """Stop the output thread, print what is queued, leave the last panel on screen, print the run summary."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        try:
            try:
                self._flush()
            finally:
                if self._live is not None:
                    self._live.stop()
            if self._state.job is None and self._state.summary is None:
                return  # nothing ran (e.g. a configuration error): no summary of an empty run
            if self._spec.live:
                self.console.print(render_summary(self._state))
            else:
                for line in summary_lines(self._state):
                    self._print(line)
        except OSError as exc:  # e.g. `shield-ps serve | head`: the reader is gone, the run is not at fault
            log.debug("terminal view: output closed (%s)", exc)

    def __enter__(self) -> View:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- output thread ------------------------------------------------------------------------------------------

    def _enqueue(self, item: tuple[Any, ViewState] | str) -> None:
        if len(self._queue) >= self._backlog:
            self._dropped += 1
            return
        self._queue.append(item)
        if not self._spec.live:
            self._wake.set()

    def _pump(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._period)
            self._wake.clear()
            try:
                self._flush()
            except Exception:  # noqa: BLE001 - a broken terminal must not kill the run; say so once and stop drawing
                log.exception("terminal view failed; no further output from it")
                return

    def _flush(self) -> None:
        while self._queue:
            item = self._queue.popleft()
            line = item if isinstance(item, str) else format_event(*item)
            if line is None:
                continue
            for text in self._startup.admit(*item, line) if self._startup and not isinstance(item, str) else [line]:
                self._print(text)
        for text in self._startup.due() if self._startup else ():
            self._print(text)
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            self._print(f"({dropped} lines dropped: the output was too slow)")
        if self._live is not None and (self._drawn is not self._state or time.monotonic() - self._drawn_at > 1.0):
            self._drawn, self._drawn_at = self._state, time.monotonic()
            self._live.refresh()

    def _print(self, line: str) -> None:
        self.console.print(Text(line), soft_wrap=True, highlight=False)


def add_view_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--plain`` and ``--quiet`` (mutually exclusive) to a subcommand that shows a run."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--plain", action="store_true", help="one plain line per step/event, no live panel")
    group.add_argument("--quiet", action="store_true",
                       help="print only evaluations, failed checkpoint writes and the final summary")


def view_from_args(args: argparse.Namespace, console: Console | None = None) -> View:
    """The view ``--plain``/``--quiet`` (see :func:`add_view_options`) and the terminal ask for."""
    return make_view(choose_mode(plain=getattr(args, "plain", False), quiet=getattr(args, "quiet", False)), console)


def make_view(mode: ViewMode, console: Console | None = None, *, refresh_hz: float = 4.0) -> View:
    """A view in ``mode`` writing to ``console`` (stdout by default). Call ``start()``, ``publish()``, ``close()``."""
    return View(mode, console, refresh_hz=refresh_hz)
