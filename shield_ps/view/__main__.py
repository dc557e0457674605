"""``python -m shield_ps.view [RUN] [--fake] [--pace-ms N] [--plain | --quiet]``: replay a run into the view.

Shows a finished run's ``metrics.jsonl`` (or a synthetic run with ``--fake``) the way ``shield-ps serve`` shows a
live one; ``--pace-ms`` waits that long before each step so the live panel can be watched (and tested under tmux).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from shield_ps.errors import ShieldPSError
from wire.cli import OneLineErrorParser, non_negative_int, positive_int


def _paced(events: Iterable[dict[str, Any]], pace: float) -> Iterable[dict[str, Any]]:
    for event in events:
        if pace and event.get("kind") == "step":
            time.sleep(pace)
        yield event


def main(argv: Sequence[str] | None = None) -> int:
    from shield_ps.view import add_view_options, iter_events, view_from_args
    from shield_ps.view.fake import fake_run

    parser = OneLineErrorParser(prog="python -m shield_ps.view",
                                description="Show a run's metrics.jsonl (or a synthetic run) through the view.")
    parser.add_argument("run", nargs="?", help="run directory or metrics.jsonl")
    parser.add_argument("--fake", action="store_true", help="replay a synthetic run instead")
    parser.add_argument("--steps", type=positive_int, default=60, help="steps of the synthetic run")
    parser.add_argument("--workers", type=positive_int, default=15, help="workers of the synthetic run")
    parser.add_argument("--pace-ms", type=non_negative_int, default=0, help="milliseconds to wait before each step")
    add_view_options(parser)
    args = parser.parse_args(argv)
    if (args.run is None) == (not args.fake):
        parser.error("give a RUN or --fake (not both)")
    try:
        events = fake_run(args.steps, args.workers, eval_every=max(args.steps // 6, 1), codecs=True) if args.fake \
            else iter_events(args.run)
    except ShieldPSError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    with view_from_args(args) as view:
        try:
            for event in _paced(events, args.pace_ms / 1000):
                view.publish(event)
        except KeyboardInterrupt:
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
