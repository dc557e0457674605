"""The terminal view driven by a fake event stream: live panel, plain lines, quiet mode, summary, replay."""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
from rich.console import Console

from shield_ps.errors import ViewError
from shield_ps.view import View, ViewMode, choose_mode, fold_all, iter_events, make_view, replay_file
from shield_ps.view.fake import fake_run
from shield_ps.view.live import render
from shield_ps.view.plain import format_event
from shield_ps.view.state import ViewState

STEPS, WORKERS = 24, 15


def _events(**kwargs: object) -> list[dict]:
    return list(fake_run(steps=STEPS, workers=WORKERS, eval_every=8, **kwargs))


def _screen(state: ViewState, width: int, height: int) -> list[str]:
    console = Console(record=True, width=width, height=height, file=io.StringIO(), force_terminal=True)
    console.print(render(state, width, height))
    return console.export_text().rstrip("\n").split("\n")


def _run_view(mode: ViewMode, events: list, *, width: int = 80, terminal: bool = False) -> tuple[str, str]:
    """Drive a started view with ``events``; return (raw output, recorded text)."""
    out = io.StringIO()
    console = Console(record=True, width=width, height=24, file=out, force_terminal=terminal)
    with make_view(mode, console, refresh_hz=50) as view:
        for event in events:
            view.publish(event)
    return out.getvalue(), console.export_text()


def test_live_panel_fits_80x24_and_shows_every_part() -> None:
    events = _events()
    state = fold_all(events[: len(events) // 2])
    lines = _screen(state, 80, 24)
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    done = state.step + 1
    assert f"step {done}/{STEPS}" in text and "eta 0:00:" in text
    assert f"lr {state.lr:.4g}" in text and f"loss {state.loss:.4f}" in text
    assert f"eval@{state.last_eval.step} top1 {100 * state.last_eval.top1:.2f}%" in text
    assert f"won {state.vote.won}/{state.vote.files}" in text and f"total corrupted {state.files_corrupted}" in text
    for worker in range(WORKERS):
        assert f"{worker:>2} done" in text or f"{worker:>2} late" in text
    assert f"x{state.workers[3].disagreements}" in text  # a Byzantine worker's running disagreement count
    for phase in ("broadcast", "compute", "gather", "vote", "aggregate", "update"):
        assert phase in text
    assert "running" in lines[-1]


def test_wide_terminal_puts_workers_and_phases_side_by_side() -> None:
    state = fold_all(_events())
    lines = _screen(state, 140, 40)
    assert all(len(line) <= 140 for line in lines)
    assert any("workers" in line and "step phases" in line for line in lines)
    assert any(" 0 done" in line and "broadcast" in line for line in lines)
    assert "finished: completed" in lines[-1]
    assert len(lines) < len(_screen(state, 80, 40))


def test_short_terminal_shrinks_phases_to_one_stacked_bar() -> None:
    state = fold_all(_events())
    lines = _screen(state, 80, 16)
    assert len(lines) <= 16
    assert any("compute" in line and "gather" in line and "%" in line for line in lines)


@pytest.mark.parametrize("width", [80, 140])
def test_many_workers_still_fit_and_the_flagged_ones_stay_visible(width: int) -> None:
    events = list(fake_run(steps=20, workers=100, byzantine=(3, 7, 55, 90)))
    state = fold_all(events[: len(events) // 2])
    lines = _screen(state, width, 24)
    assert len(lines) <= 24
    text = "\n".join(lines)
    assert "more workers not shown" in text
    for worker in (3, 7, 55, 90):
        assert f"{worker:>2} done" in text and f"x{state.workers[worker].disagreements}" in text


def test_panel_before_the_job_is_announced() -> None:
    text = "\n".join(_screen(ViewState(), 80, 24))
    assert "not announced" in text and "step 0/?" in text


def test_plain_mode_one_line_per_step_no_escape_codes() -> None:
    events = _events()
    raw, text = _run_view(ViewMode.PLAIN, events, width=60)
    assert "\x1b" not in raw
    lines = raw.splitlines()
    step_lines = [line for line in lines if " step " in line and "eval" not in line]
    assert len(step_lines) == STEPS
    assert step_lines[0].startswith("[+0:00:01] step 1/24 ep 1/4 lr 0.01 loss 2.3500 won 25/25 dropped 0 corrupted 2")
    assert max(map(len, step_lines)) > 60  # long lines stay one line: never wrapped to the console width
    late = [e for e in events if e["kind"] == "worker" and e["state"] == "late"]
    assert len([line for line in lines if " worker " in line and " late " in line]) == len(late)
    assert not any(" done " in line and " worker " in line for line in lines)  # computing/done make no line
    assert sum(" eval step " in line for line in lines) == 3
    assert lines[0].startswith("[+0:00:00] job mols K=15 f=25 r=3")
    assert lines[-5:] == [line for line in lines if line.startswith("summary:")]
    assert "summary: run      completed" in lines[-5] and "summary: flagged  3 (x" in lines[-1]


def test_quiet_mode_prints_only_evaluations_and_the_summary() -> None:
    raw, _ = _run_view(ViewMode.QUIET, _events())
    lines = raw.splitlines()
    assert "\x1b" not in raw
    assert len(lines) == 3 + 5
    assert all(" eval step " in line for line in lines[:3]) and all(line.startswith("summary:") for line in lines[3:])


def test_live_mode_draws_the_panel_and_ends_with_the_summary() -> None:
    raw, text = _run_view(ViewMode.LIVE, _events(), terminal=True)
    assert "\x1b[" in raw  # cursor movement and colour: it really is the live display
    assert "finished: completed" in text
    tail = text[text.rindex("finished: completed"):]
    assert "run summary" in tail and f"{STEPS} in 0:00:1" in tail and "flagged   3 (x" in tail
    assert text.count(" eval step ") == 3  # evaluations also scroll above the panel as a history


def test_summary_without_a_summary_event_says_so() -> None:
    raw, _ = _run_view(ViewMode.QUIET, _events()[:-1])
    assert "summary: run      no summary received" in raw
    assert f"summary: steps    {STEPS} in" in raw


def test_malformed_events_print_nothing_and_raise_nothing() -> None:
    raw, _ = _run_view(ViewMode.PLAIN, [None, {"kind": "step", "step": "x"}, {"kind": "eval"}, 5])
    assert [line for line in raw.splitlines() if not line.startswith("summary:")] == []


def test_publish_never_waits_for_output_and_counts_dropped_lines() -> None:
    out = io.StringIO()
    view = View(ViewMode.PLAIN, Console(file=out, width=80), backlog=5)  # not started: nothing drains the queue
    events = _events()
    for event in events:
        view.publish(event)
    assert out.getvalue() == "" and view.state.steps_seen == STEPS
    view.close()
    view.close()  # idempotent
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 + 1 + 5
    assert lines[5].startswith("(") and "lines dropped" in lines[5]


def test_log_handler_prints_through_the_view() -> None:
    out = io.StringIO()
    view = make_view(ViewMode.QUIET, Console(file=out, width=80))
    logger = logging.getLogger("test_view_render.log_handler")
    logger.addHandler(view.log_handler(logging.WARNING))
    logger.propagate = False
    try:
        view.start()
        logger.warning("worker %d looks Byzantine", 3)
        logger.info("not shown")
    finally:
        view.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "WARNING test_view_render.log_handler: worker 3 looks Byzantine"
    assert "not shown" not in out.getvalue()


def test_format_event_is_a_pure_function_of_event_and_state() -> None:
    events = _events()
    state = fold_all(events[:40])
    assert format_event(events[39], state) == format_event(events[39], state)
    assert format_event({"kind": "bogus"}, state) is None


def test_choose_mode() -> None:
    assert choose_mode(quiet=True) is ViewMode.QUIET
    assert choose_mode(stream=io.StringIO()) is ViewMode.PLAIN
    leader, follower = os.openpty()
    try:
        with open(follower, "w", closefd=False) as tty:
            os.environ.setdefault("TERM", "xterm")
            if os.environ["TERM"] != "dumb":
                assert choose_mode(stream=tty) is ViewMode.LIVE
            assert choose_mode(plain=True, stream=tty) is ViewMode.PLAIN
            assert choose_mode(plain=True, quiet=True, stream=tty) is ViewMode.QUIET
    finally:
        os.close(leader)
        os.close(follower)


def test_replay_file_and_a_torn_last_line(tmp_path: Path) -> None:
    events = _events()
    run = tmp_path / "run1"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as fh:
        for event in events:
            fh.write(json.dumps(event) + "\n")
        fh.write('{"kind": "step", "ti')  # a run killed mid-write
    assert list(iter_events(run)) == events == list(iter_events(run / "metrics.jsonl"))
    view = make_view(ViewMode.QUIET, Console(file=io.StringIO()))
    assert replay_file(run, view) == len(events)
    assert view.state == fold_all(events)
    with pytest.raises(ViewError, match="no run metrics"):
        replay_file(tmp_path / "missing", view)


def test_determinism_classes_are_shown_in_plain_and_live_views() -> None:
    job = next(e for e in _events() if e["kind"] == "job")
    extra = [{"kind": "worker", "time": 1.0, "step": 0, "worker": 1, "state": "connected", "compute_s": None,
              "address": "10.0.0.2:5", "class": "c-6646e76d"},
             {"kind": "classes", "time": 1.0, "vote": "auto", "spread": 3.5e-7, "tolerance": 3.5e-6,
              "classes": [{"id": "c-026cf1bc", "workers": [0, 2], "environment": {}},
                          {"id": "c-6646e76d", "workers": [1], "environment": {"aten_cpu_capability": "avx2"}}]}]
    state = fold_all([job, *extra])
    assert state.classes == (("c-026cf1bc", (0, 2)), ("c-6646e76d", (1,))) and state.tolerance == 3.5e-6
    assert format_event(extra[0], state).endswith("worker 1 connected (10.0.0.2:5) class c-6646e76d")
    line = format_event(extra[1], state)
    assert "2 determinism class(es)" in line and "c-6646e76d workers 1" in line and "3.5e-06" in line
    assert any("2 classes, tol 3.5e-06" in row for row in _screen(state, 100, 30))
    assert fold_all([job, {"kind": "classes", "time": 1.0, "classes": "x"}]).malformed == 1
