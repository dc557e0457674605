"""Progress of ``up`` / ``down``: a rich live table on a terminal, plain lines otherwise, JSON lines for scripts.

Every reporter receives the same calls: :meth:`Reporter.state` when a node changes state (with per-node errors as
``NodeState.FAILED`` plus the message), and :meth:`Reporter.info` for cluster-wide messages.
"""
from __future__ import annotations

import enum
import json
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from shield_ops.nodes import NodeState, sort_key


class OutputFormat(str, enum.Enum):
    """``--format`` values; ``auto`` means a live table on a terminal and plain lines elsewhere."""

    AUTO = "auto"
    TABLE = "table"
    PLAIN = "plain"
    JSON = "json"


@dataclass
class Row:
    state: NodeState
    detail: str = ""
    instance: str = ""
    since: float = field(default_factory=time.monotonic)


class Reporter:
    """Keeps the latest state per node; subclasses render changes."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.rows: dict[str, Row] = {}

    def state(self, node: str, state: NodeState, detail: str = "", instance: str = "") -> None:
        old = self.rows.get(node)
        if (old is not None and (old.state, old.detail) == (state, detail)
                and (not instance or instance == old.instance)):
            return
        self.rows[node] = Row(state, detail, instance or (old.instance if old else ""))
        self._changed(node)

    def info(self, text: str) -> None:
        self._write(text)

    @property
    def failed(self) -> dict[str, str]:
        return {n: r.detail for n, r in self.rows.items() if r.state is NodeState.FAILED}

    def close(self) -> None:
        pass

    def _changed(self, node: str) -> None:
        row = self.rows[node]
        instance = f" [{row.instance}]" if row.instance else ""
        detail = f": {row.detail}" if row.detail else ""
        self._write(f"{node}{instance} {row.state.value}{detail}")

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PlainReporter(Reporter):
    """One plain line per state change, no cursor codes (CI, files, pipes)."""


class JsonReporter(Reporter):
    """One JSON object per line: ``{"event": "node"|"info", ...}``."""

    def _changed(self, node: str) -> None:
        row = self.rows[node]
        self._emit({"event": "node", "node": node, "state": row.state.value, "detail": row.detail,
                    "instance": row.instance})

    def info(self, text: str) -> None:
        self._emit({"event": "info", "message": text})

    def _emit(self, obj: dict[str, Any]) -> None:
        obj["time"] = round(time.time(), 3)
        print(json.dumps(obj), file=self.stream, flush=True)


class LiveReporter(Reporter):
    """A rich live table of nodes moving pending -> running -> ssh-ready -> deployed -> started."""

    STYLE = {NodeState.FAILED: "bold red", NodeState.STARTED: "green", NodeState.DEPLOYED: "cyan",
             NodeState.SSH_READY: "blue", NodeState.TERMINATED: "dim"}

    def __init__(self, stream: IO[str] | None = None, title: str = "shield cluster") -> None:
        super().__init__(stream)
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.console = Console(file=self.stream)
        # get_renderable: the refresh thread rebuilds the table, so the "for" column keeps ticking
        self.live = Live(console=self.console, refresh_per_second=2, transient=False, get_renderable=self._table)
        self.started = False  # started by the first node state: the plan and any [y/N] prompt come first

    def _table(self) -> Any:
        from rich.table import Table

        table = Table(title=self.title, expand=False)
        for column in ("node", "instance", "state", "for", "detail"):
            table.add_column(column)
        now = time.monotonic()
        rows = dict(self.rows)  # one atomic copy: the refresh thread must not see the dict change mid-iteration
        for name in sorted(rows, key=sort_key):
            row = rows[name]
            style = self.STYLE.get(row.state, "")
            table.add_row(name, row.instance, f"[{style}]{row.state.value}[/]" if style else row.state.value,
                          f"{now - row.since:.0f}s", row.detail)
        return table

    def _changed(self, node: str) -> None:
        if not self.started:
            self.started = True
            self.live.start()
        self.live.refresh()

    def info(self, text: str) -> None:
        self.live.console.print(text)

    def close(self) -> None:
        if self.started:
            self.live.stop()


def make_reporter(fmt: OutputFormat, stream: IO[str] | None = None, title: str = "shield cluster") -> Reporter:
    """The reporter for ``fmt``; ``auto``/``table`` fall back to plain lines when the output is not a terminal."""
    out = stream or sys.stdout
    if fmt is OutputFormat.JSON:
        return JsonReporter(out)
    if fmt in (OutputFormat.AUTO, OutputFormat.TABLE) and out.isatty():
        return LiveReporter(out, title)
    return PlainReporter(out)
