"""The view's join progress line and the summary's median step time (pure functions of the events)."""
from __future__ import annotations

import io

from shield_ps.view.figures import median_step_seconds, waiting_line
from shield_ps.view.plain import format_event
from shield_ps.view.state import fold, fold_all
from shield_ps.view.summary import summary_lines


def _step(step: int, time: float) -> dict:
    return {"kind": "step", "time": time, "step": step, "files": 25, "files_won": 25, "files_dropped": 0,
            "files_corrupted": 0, "flagged": [], "erased": [], "times": {"total": 0.1}}


def test_waiting_line_until_the_first_step() -> None:
    join = {"kind": "join", "time": 1.0, "ready": 3, "loading": 11, "missing": 1, "left_s": 297.4}
    state = fold_all([{"kind": "job", "time": 0.0, "workers": 15, "total_steps": 4}, join])
    assert waiting_line(state) == "waiting for agents: 3 ready, 11 loading, 1 missing (297s left)"
    assert format_event(join, state).endswith("waiting for agents: 3 ready, 11 loading, 1 missing (297s left)")
    assert waiting_line(fold(state, _step(0, 2.0))) is None


def test_a_malformed_join_event_is_counted_not_shown() -> None:
    state = fold_all([{"kind": "join", "time": 1.0, "ready": -1, "loading": 0, "missing": 0}])
    assert state.malformed == 1 and waiting_line(state) is None


def test_summary_gives_the_median_step_not_the_start_up_wait() -> None:
    # a 60 s wait for agents, then steps 0.5 s apart with one slow step
    events = [{"kind": "job", "time": 0.0, "workers": 3, "total_steps": 6}]
    times = [60.0, 60.5, 61.0, 64.0, 64.5, 65.0]
    events += [_step(i, t) for i, t in enumerate(times)]
    events.append({"kind": "summary", "time": 65.0, "steps": 6, "wall_s": 65.0, "reason": "completed"})
    state = fold_all(events)
    assert median_step_seconds(state) == 0.5
    steps_line = next(line for line in summary_lines(state) if "steps" in line)
    assert "(median 0.500 s/step)" in steps_line


def test_live_panel_shows_the_waiting_line() -> None:
    from rich.console import Console

    from shield_ps.view.live import render

    state = fold_all([{"kind": "job", "time": 0.0, "workers": 15, "total_steps": 4},
                      {"kind": "join", "time": 1.0, "ready": 0, "loading": 15, "missing": 0, "left_s": 1500}])
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(render(state, width=100))
    assert "waiting for agents: 0 ready, 15 loading, 0 missing (1500s left)" in console.export_text()
