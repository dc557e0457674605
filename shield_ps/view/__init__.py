"""The terminal view of a run: live panel, plain log lines, quiet mode, end-of-run summary.

API for the PS runtime and for ``shield-ps watch`` (transport-agnostic: anything that has run events calls
``publish``)::

    from shield_ps.view import ViewMode, choose_mode, make_view, replay_file

    view = make_view(choose_mode(plain=args.plain, quiet=args.quiet))   # live on a TTY, else plain
    view.start()
    try:
        for event in run_events:          # the same dicts that go to RUN/metrics.jsonl (docs/metrics.md)
            view.publish(event)           # microseconds; never blocks, never raises on a bad event
    finally:
        view.close()                      # idempotent; prints the final summary

- ``add_view_options(parser)`` adds ``--plain`` / ``--quiet``; ``view_from_args(args, console=None) -> View``
- ``choose_mode(*, plain=False, quiet=False, stream=None) -> ViewMode``
- ``make_view(mode: ViewMode, console: rich.console.Console | None = None, *, refresh_hz=4.0) -> View``
- ``View.start()``, ``View.publish(event: dict)``, ``View.post_line(text: str)``, ``View.close()``,
  ``View.log_handler(level) -> logging.Handler``, ``View.state -> ViewState``; ``View`` is a context manager.
- ``replay_file(run: str | Path, view) -> int`` publishes a run's ``metrics.jsonl``; ``iter_events(run)`` reads it.
- ``state.fold(state, event) -> ViewState`` and ``state.fold_all(events)`` are the pure model behind the view.

Output happens on one daemon thread owned by the view (live: redrawn at ``refresh_hz``; plain: as lines are queued),
so the publisher's time is spent only folding the event. See ``docs/view.md``.
"""
from __future__ import annotations

from shield_ps.view.replay import iter_events, metrics_path, replay_file
from shield_ps.view.sink import View, ViewMode, add_view_options, choose_mode, make_view, view_from_args
from shield_ps.view.state import ViewState, fold, fold_all

__all__ = ["View", "ViewMode", "ViewState", "add_view_options", "choose_mode", "fold", "fold_all", "iter_events",
           "make_view", "metrics_path", "replay_file", "view_from_args"]
