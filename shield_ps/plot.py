"""Curves of one or more runs on one figure: test accuracy and training loss vs step, and where the step time goes.

The accuracy and loss panels are the comparison of the paper's figures 2-11 (Konstantinidis & Ramamoorthy, MLSys
2021); the stacked bars of mean seconds per step by phase are its figure 12. matplotlib is an optional dependency
(``pip install 'shield[plot]'``), imported only when a figure is drawn; the figure is built with the object API (no
pyplot state), so it is safe in threads and headless.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shield_ps.errors import PlotError
from shield_ps.events import effective_events
from shield_ps.phases.names import Phase
from shield_ps.view.replay import iter_events, metrics_path
from shield_ps.view.state import PHASES

PHASE_COLORS = {Phase.BROADCAST.value: "#4c9be8", Phase.DIGEST_GATHER.value: "#58b368",
                Phase.PAYLOAD_FETCH.value: "#8f6bd8", Phase.VOTE.value: "#e0a030", Phase.AGGREGATE.value: "#e8674c",
                Phase.UPDATE.value: "#9a9a9a"}


@dataclass(frozen=True)
class RunCurves:
    """What a plot needs from one run, read from its ``metrics.jsonl`` (after a resume, the steps run again count
    once: :func:`shield_ps.events.effective_events`)."""

    label: str
    loss: dict[int, float] = field(default_factory=dict)  #: step -> training loss
    top1: dict[int, float] = field(default_factory=dict)  #: step -> test top-1 accuracy (fraction)
    phase_sum: dict[str, float] = field(default_factory=dict)  #: phase -> seconds summed over steps with timings
    timed_steps: int = 0

    @property
    def phase_means(self) -> dict[str, float]:
        """Mean seconds per step of each phase."""
        return {p: self.phase_sum.get(p, 0.0) / self.timed_steps for p in PHASES} if self.timed_steps else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def curves_from_events(events: Iterable[dict[str, Any]], label: str) -> RunCurves:
    """Collect the loss, accuracy and phase times of one run's events, without the events a resume superseded."""
    loss: dict[int, float] = {}
    top1: dict[int, float] = {}
    phases_by_step: dict[int, dict[str, float]] = {}
    for event in effective_events(list(events)):
        step = event.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        if event.get("kind") == "step":
            if (value := _number(event.get("loss"))) is not None:
                loss[step] = value
            times = event.get("times")
            if isinstance(times, dict):
                phases_by_step[step] = {p: _number(times.get(p)) or 0.0 for p in PHASES}
        elif event.get("kind") == "eval" and (value := _number(event.get("top1"))) is not None:
            top1[step] = value
    phase_sum = {p: sum(t[p] for t in phases_by_step.values()) for p in PHASES}
    return RunCurves(label, loss, top1, phase_sum, len(phases_by_step))


def default_label(run: str | Path) -> str:
    """The run directory's name (also for ``RUN/metrics.jsonl``), else the file's stem."""
    path = Path(run)
    if path.is_dir():
        return path.resolve().name
    return path.resolve().parent.name if path.name == "metrics.jsonl" else path.stem


def load_curves(run: str | Path, label: str | None = None) -> RunCurves:
    """Read one run (a run directory or a ``metrics.jsonl``); PlotError when it has neither steps nor evaluations."""
    curves = curves_from_events(iter_events(run), label or default_label(run))
    if not curves.loss and not curves.top1:
        raise PlotError(f"{metrics_path(run)} has no step or eval events to plot")
    return curves


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("plots need matplotlib: pip install 'shield[plot]'") from None
    return Figure


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _draw_accuracy(ax: Any, runs: Sequence[RunCurves]) -> None:
    for i, run in enumerate(runs):
        steps = sorted(run.top1)
        ax.plot(steps, [100 * run.top1[s] for s in steps], marker="o", markersize=3, color=f"C{i}", label=run.label)
    ax.set(title="test accuracy", xlabel="step", ylabel="top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")


def _draw_loss(ax: Any, runs: Sequence[RunCurves]) -> None:
    for i, run in enumerate(runs):
        steps = sorted(run.loss)
        values = [run.loss[s] for s in steps]
        window = max(1, len(values) // 25)
        if window > 1:
            ax.plot(steps, values, color=f"C{i}", alpha=0.25, linewidth=0.8)
        ax.plot(steps, _smooth(values, window), color=f"C{i}", label=run.label)
    ax.set(title="training loss", xlabel="step", ylabel="loss")
    if any(v > 0 for run in runs for v in run.loss.values()) and all(v > 0 for run in runs for v in run.loss.values()):
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")


def _draw_phases(ax: Any, runs: Sequence[RunCurves]) -> None:
    positions = list(range(len(runs)))
    bottoms = [0.0] * len(runs)
    for phase in PHASES:
        heights = [run.phase_means.get(phase, 0.0) for run in runs]
        ax.bar(positions, heights, bottom=bottoms, color=PHASE_COLORS[phase], label=phase, width=0.6)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=False)]
    ax.set_xticks(positions, [run.label for run in runs], rotation=20 if len(runs) > 2 else 0, ha="right"
                  if len(runs) > 2 else "center", fontsize="small")
    ax.set(title="time per step by phase", ylabel="seconds")
    handles, labels = ax.get_legend_handles_labels()  # legend top to bottom = stack top to bottom
    ax.legend(handles[::-1], labels[::-1], fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")


def plot_runs(runs: Sequence[RunCurves], output: str | Path, *, size: tuple[float, float] = (15.0, 4.5),
              dpi: int = 100, title: str | None = None) -> Path:
    """Draw accuracy, loss and phase-time panels for ``runs`` into ``output`` (format from its suffix: png, svg,
    pdf). The image is exactly ``size`` inches at ``dpi`` (a PNG of 1500x450 pixels by default)."""
    if not runs:
        raise PlotError("nothing to plot: no runs given")
    figure = _figure_class()(figsize=size, dpi=dpi, layout="constrained")
    acc, loss, phases = figure.subplots(1, 3, width_ratios=[1.0, 1.0, 0.8])
    _draw_accuracy(acc, runs)
    _draw_loss(loss, runs)
    _draw_phases(phases, runs)
    if title:
        figure.suptitle(title)
    output = Path(output)
    try:
        figure.savefig(output, dpi=dpi)
    except (OSError, ValueError) as exc:
        raise PlotError(f"cannot write {output}: {exc}") from None
    return output
