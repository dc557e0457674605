"""One row per run of a sweep, read from the run's ``metrics.jsonl`` (docs/metrics.md), and the results table.

The measured fraction of corrupted files per step (``files_corrupted / files``, averaged over the steps) stands next
to the worst case ``c_max(q) / f`` of the placement (ByzShield Sec. 5, computed by
:func:`byzantine.worst_case.worst_case`): with ``--byzantine-gen worst`` the two should be equal.

The last three columns are the run's *point* over its seeds (:mod:`shield_ps.sweep.stats`): ``top1_mean`` and
``top1_ci95`` (the half-width of the 95% t interval of the final top-1 over the point's completed seeds) and
``drop_vs_control`` (the mean over seeds of the control's final top-1 minus the point's, paired by seed; empty for
the q = 0 controls themselves). All accuracies are fractions.
"""
from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from shield_ps.phases.names import TOTAL
from shield_ps.sweep.grid import RunSpec

COMPLETED = "completed"


@dataclass(frozen=True)
class RunRow:
    """The results of one run (None where the run has no such data yet)."""

    run: str
    scheme: str
    aggregator: str
    attack: str
    q: int
    seed: int
    status: str
    steps: int = 0
    final_top1: float | None = None
    best_top1: float | None = None
    final_loss: float | None = None
    corrupted_frac: float | None = None
    cmax_frac: float | None = None
    median_step_s: float | None = None
    bytes_in_per_step: float | None = None
    bytes_out_per_step: float | None = None
    wall_s: float | None = None
    top1_mean: float | None = None
    top1_ci95: float | None = None
    drop_vs_control: float | None = None


def cmax_fraction(spec: RunSpec) -> float:
    """c_max(q) / f of the run's placement: the largest fraction of files q Byzantine workers can win."""
    from byzantine.placement import build_placement
    from byzantine.worst_case import worst_case

    c = spec.config()
    placement = build_placement(c.scheme, c.workers, c.replication, c.rama_m)
    return worst_case(placement, spec.q).c_max / placement.f


def summarize(spec: RunSpec, events: Iterable[dict[str, Any]], status: str) -> RunRow:
    """The row of ``spec`` from its events (a resumed step or evaluation overwrites the earlier one)."""
    steps, evals, wall = _fold(events)
    ordered = [steps[s] for s in sorted(steps)]
    fractions = [e["files_corrupted"] / e["files"] for e in ordered
                 if isinstance(e.get("files_corrupted"), int) and isinstance(e.get("files"), int) and e["files"]]
    totals = [e["times"][TOTAL] for e in ordered if isinstance(e.get("times"), dict)
              and isinstance(e["times"].get(TOTAL), (int, float))]
    return RunRow(
        run=spec.name, scheme=spec.scheme.value, aggregator=spec.aggregator.value, attack=spec.attack, q=spec.q,
        seed=spec.seed, status=status, steps=len(ordered),
        final_top1=evals[max(evals)] if evals else None, best_top1=max(evals.values()) if evals else None,
        final_loss=_last(ordered, "loss"), corrupted_frac=statistics.fmean(fractions) if fractions else None,
        cmax_frac=cmax_fraction(spec), median_step_s=statistics.median(totals) if totals else None,
        bytes_in_per_step=_mean(ordered, "bytes_in"), bytes_out_per_step=_mean(ordered, "bytes_out"), wall_s=wall)


def _fold(events: Iterable[dict[str, Any]]) -> tuple[dict[int, dict[str, Any]], dict[int, float], float | None]:
    """A run's step events by step, its evaluations' top-1 by step, and the wall seconds its summaries add up to
    (None without one); a later event of a step replaces an earlier one."""
    steps: dict[int, dict[str, Any]] = {}
    evals: dict[int, float] = {}
    wall = None
    for event in events:
        kind, step = event.get("kind"), event.get("step")
        if kind == "step" and isinstance(step, int):
            steps[step] = event
        elif kind == "eval" and isinstance(step, int) and isinstance(event.get("top1"), (int, float)):
            evals[step] = float(event["top1"])
        elif kind == "summary" and isinstance(event.get("wall_s"), (int, float)):
            wall = float(event["wall_s"]) + (wall or 0.0)
    return steps, evals, wall


def _last(events: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [e[key] for e in events if isinstance(e.get(key), (int, float))]
    return float(values[-1]) if values else None


def _mean(events: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [e[key] for e in events if isinstance(e.get(key), (int, float))]
    return statistics.fmean(values) if values else None


def write_csv(rows: Sequence[RunRow], path: Path) -> Path:
    """Write ``rows`` as CSV (header = :class:`RunRow`'s fields; empty cells for missing values), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(RunRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    tmp.replace(path)
    return path


def markdown_table(rows: Sequence[RunRow]) -> str:
    """The results as a Markdown table (what docs/experiments.md quotes), one line per run."""
    head = ("scheme", "aggregator", "attack", "q", "seed", "steps", "final top-1", "best top-1", "final loss",
            "corrupted/step", "c_max/f", "s/step", "kB in/step", "kB out/step", "point top-1 (95%)",
            "point drop vs control", "status")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        kb_in = None if r.bytes_in_per_step is None else r.bytes_in_per_step / 1e3
        kb_out = None if r.bytes_out_per_step is None else r.bytes_out_per_step / 1e3
        cells = (r.scheme, r.aggregator, r.attack, str(r.q), str(r.seed), str(r.steps), _pct(r.final_top1),
                 _pct(r.best_top1), _num(r.final_loss, ".3f"), _pct(r.corrupted_frac), _pct(r.cmax_frac),
                 _num(r.median_step_s, ".2f"), _num(kb_in, ",.0f"), _num(kb_out, ",.0f"),
                 pct_interval(r.top1_mean, r.top1_ci95), points(r.drop_vs_control), r.status.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def pct_interval(mean: float | None, ci95: float | None) -> str:
    """A fraction and its 95% half-width in percent: ``92.1% ± 0.8`` (no interval: one seed)."""
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}%" + ("" if ci95 is None else f" ± {100 * ci95:.1f}")


def points(value: float | None, ci95: float | None = None, signed: bool = True) -> str:
    """A difference of fractions in percentage points: ``+1.3`` (``± 0.4``)."""
    if value is None:
        return "-"
    return f"{100 * value:{'+' if signed else ''}.1f}" + ("" if ci95 is None else f" ± {100 * ci95:.1f}")


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rich_table(rows: Sequence[RunRow], title: str = "sweep results") -> Any:
    """The results as a rich Table (percentages for accuracies and corrupted fractions, kB per step)."""
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for name in ("scheme", "aggregator", "attack", "q", "seed", "steps", "final top-1", "best top-1", "final loss",
                 "corrupted/step", "c_max/f", "s/step", "kB in/step", "kB out/step", "point top-1", "point drop",
                 "status"):
        table.add_column(name, justify="left" if name in ("scheme", "aggregator", "attack", "status") else "right")
    for r in rows:
        table.add_row(r.scheme, r.aggregator, r.attack, str(r.q), str(r.seed), str(r.steps), _pct(r.final_top1),
                      _pct(r.best_top1), _num(r.final_loss, ".3f"), _pct(r.corrupted_frac), _pct(r.cmax_frac),
                      _num(r.median_step_s, ".2f"), _num(None if r.bytes_in_per_step is None
                                                         else r.bytes_in_per_step / 1e3, ",.0f"),
                      _num(None if r.bytes_out_per_step is None else r.bytes_out_per_step / 1e3, ",.0f"),
                      pct_interval(r.top1_mean, r.top1_ci95), points(r.drop_vs_control),
                      r.status if len(r.status) < 60 else r.status[:57] + "...")
    return table
