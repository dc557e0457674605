"""The terminal view driven by a fake event stream: live panel, plain lines, quiet mode, summary, replay."""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from pathlib import Path

import pytest
from rich.console import Console

from shield_ps.errors import ViewError
from shield_ps.plot import curves_from_events, load_curves
from shield_ps.view import View, ViewMode, choose_mode, fold_all, iter_events, make_view, replay_file
from shield_ps.view.fake import fake_run
from shield_ps.view.live import render
from shield_ps.view.plain import StartupLines, format_event
from shield_ps.view.state import ViewState, fold
from shield_ps.view.summary import render_summary, summary_lines

STEPS, WORKERS = 24, 15
SUMMARY_ROWS = 12


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
    assert f"x{state.workers[3].disagreements}" in text  # a Byzantine worker's running count of lost votes
    assert f"!{state.workers[3].lies}" in text  # ... and of proven lies (it forged a payload now and then)
    assert "refused 2" in text and "updates skipped" in text
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
def test_many_workers_still_fit_and_the_outvoted_ones_stay_visible(width: int) -> None:
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
    step_lines = [line for line in lines if "] step " in line]
    assert len(step_lines) == STEPS
    assert step_lines[0].startswith("[+0:00:01] step 1/24 ep 1/4 lr 0.01 loss 2.3500 won 25/25 dropped 0 corrupted 2")
    assert max(map(len, step_lines)) > 60  # long lines stay one line: never wrapped to the console width
    late = [e for e in events if e["kind"] == "worker" and e["state"] == "late"]
    assert len([line for line in lines if " worker " in line and " late " in line]) == len(late)
    assert not any(" done " in line and " worker " in line for line in lines)  # computing/done make no line
    assert sum(" eval step " in line for line in lines) == 3
    assert lines[0].startswith("[+0:00:00] job mols K=15 f=25 r=3")
    summary = [line for line in lines if line.startswith("summary:")]
    assert lines[-len(summary):] == summary and len(summary) == SUMMARY_ROWS
    assert summary[0] == "summary: run         completed"
    assert summary[5] == "summary: lying       3 (x4)"  # the forger only: honest workers outvoted are never here
    assert summary[6] == "summary: outvoted    0 (x1), 1 (x1), 3 (x16), 7 (x17)"
    assert "summary: checkpoints ok, last at step 24" in lines and "summary: metrics     complete" in lines
    assert "summary: refused     2 connections before authentication" in lines


def test_quiet_mode_prints_only_evaluations_and_the_summary() -> None:
    raw, _ = _run_view(ViewMode.QUIET, _events())
    lines = raw.splitlines()
    assert "\x1b" not in raw
    assert len(lines) == 3 + SUMMARY_ROWS
    assert all(" eval step " in line for line in lines[:3]) and all(line.startswith("summary:") for line in lines[3:])


def test_live_mode_draws_the_panel_and_ends_with_the_summary() -> None:
    raw, text = _run_view(ViewMode.LIVE, _events(), terminal=True)
    assert "\x1b[" in raw  # cursor movement and colour: it really is the live display
    assert "finished: completed" in text
    tail = text[text.rindex("finished: completed"):]
    assert "run summary" in tail and f"{STEPS} in 0:00:1" in tail and "outvoted     0 (x1), 1 (x1), 3 (x" in tail
    assert "lying        3 (x4)" in tail and "checkpoints  ok, last at step 24" in tail
    assert text.count(" eval step ") == 3  # evaluations also scroll above the panel as a history


def test_summary_without_a_summary_event_says_so() -> None:
    raw, _ = _run_view(ViewMode.QUIET, _events()[:-1])
    assert "summary: run         no summary received" in raw
    assert f"summary: steps       {STEPS} in" in raw
    assert "summary: lying       3 (x4)" in raw  # counted by the view itself


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
    [notice] = [i for i, line in enumerate(lines) if "lines dropped" in line]
    assert 1 <= notice <= 5 and lines[notice].startswith("(")  # the 5 queued events (start-up ones make fewer lines)
    assert len(lines) == notice + 1 + SUMMARY_ROWS


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


def test_plain_step_lines_name_each_category_skipped_updates_and_new_refusals() -> None:
    events = _events()
    raw, _ = _run_view(ViewMode.PLAIN, events)
    lines = {int(line.split()[2].split("/")[0]): line for line in raw.splitlines() if "] step " in line}
    steps = {e["step"] + 1: e for e in events if e["kind"] == "step"}
    for done, event in steps.items():
        line = lines[done]
        for category in ("lying", "outvoted", "slow", "erased"):
            named = f" {category} {','.join(map(str, event[category]))} " in line
            assert named == bool(event[category]), (category, line)
        assert ("update skipped" in line) == (event["aggregation"]["action"] == "skip"), line
    assert "lying 3 outvoted 7 " in lines[6] and "slow 13 erased 13 " in lines[5]
    assert [done for done, line in lines.items() if " refused " in line] == [4]  # printed when it rose, only
    assert "refused 2 " in lines[4]
    assert "flagged" not in raw


def _marked_state() -> ViewState:
    job = next(iter(_events()))
    step = {"kind": "step", "time": 1.0, "step": 0, "epoch": 0, "lr": 0.1, "loss": 1.0, "files": 25, "files_won": 25,
            "files_dropped": 0, "files_corrupted": 1, "lying": [2], "outvoted": [1, 5], "slow": [3], "erased": [],
            "aggregation": {"action": "lower-s", "s": 1, "reason": "too few files"}}
    return fold_all([job, step])


def test_only_a_proven_liar_is_on_red_and_the_header_counts_each_category() -> None:
    state = _marked_state()
    text = "\n".join(_screen(state, 80, 24))
    assert "1 lying  2 outvoted  1 slow" in text and "s lowered to 1" in text
    assert " 2 ----     - !1" in text and " 1 ----     - x1" in text and " 3 ----     - ~1" in text
    panel_lines = [line for line in render(state, 80, 24).renderable.renderables]
    on_red = [str(line)[span.start:span.end] for line in panel_lines for span in line.spans
              if "on red" in str(span.style)]
    assert on_red == [" 2"]  # the liar's id; outvoted 1 and 5 (honest ones can be) are not on red
    plain = format_event({"kind": "step", "time": 1.0}, state)
    assert plain is not None and "lying 2 outvoted 1,5 slow 3 s lowered to 1" in plain


def _failing_run() -> list[dict]:
    """A fake run whose checkpoint at step 16 fails and whose summary says so."""
    events = []
    for event in _events():
        if event["kind"] == "checkpoint" and event["step"] == 16:
            event = {"kind": "checkpoint", "time": event["time"], "step": 16, "ok": False,
                     "error": "OSError: [Errno 28] No space left on device"}
        elif event["kind"] == "summary":
            event = dict(event, reason="failed: the final checkpoint was not written", last_checkpoint=8,
                         checkpoint_errors=[{"step": 16, "error": "OSError: [Errno 28] No space left on device"}],
                         metrics_complete=False)
        events.append(event)
    return events


@pytest.mark.parametrize("mode", [ViewMode.PLAIN, ViewMode.QUIET, ViewMode.LIVE])
def test_a_failed_checkpoint_is_loud_in_every_mode(mode: ViewMode) -> None:
    raw, text = _run_view(mode, _failing_run(), terminal=mode is ViewMode.LIVE)
    assert "CHECKPOINT at step 16 NOT WRITTEN: OSError: [Errno 28] No space left on device" in text
    if mode is ViewMode.LIVE:
        assert "CHECKPOINT FAILED x1 (step 16)" in text  # in the panel, while the run goes on
        assert "checkpoints  FAILED x1: step 16: OSError" in text and "metrics      INCOMPLETE" in text
    else:
        assert "summary: checkpoints FAILED x1: step 16: OSError: [Errno 28] No space left on device; last at step " \
               "8" in text
        assert "summary: metrics     INCOMPLETE: metrics.jsonl could not be written to the end" in text
    state = fold_all(_failing_run())
    assert render_summary(state).border_style == "red"
    assert render_summary(fold_all(_events())).border_style == "green"  # a liar caught is no failure of the run


def _resumed_run() -> list[dict]:
    """A run killed after step 11 (checkpoint at 5), resumed from 5 and interrupted after step 8."""
    def step(s: int, loss: float, time: float) -> dict:
        return {"kind": "step", "time": time, "step": s, "epoch": 0, "lr": 0.1, "loss": loss, "files": 3,
                "files_won": 3, "files_dropped": 0, "files_corrupted": 0, "lying": [], "outvoted": [1],
                "slow": [], "erased": [], "times": {"compute": 1.0}}

    job = {"kind": "job", "time": 0.0, "scheme": "detox", "workers": 3, "files": 3, "replication": 3,
           "total_steps": 20, "steps_per_epoch": 5, "start_step": 0, "resumed": False}
    first = [job] + [step(s, 9.0, float(s)) for s in range(12)]
    first.insert(6, {"kind": "eval", "time": 5.0, "step": 5, "top1": 0.3})
    first.insert(7, {"kind": "checkpoint", "time": 5.0, "step": 5, "ok": True, "path": "c5"})
    first.insert(12, {"kind": "eval", "time": 10.0, "step": 10, "top1": 0.9})
    second = [dict(job, time=100.0, start_step=5, resumed=True)] + [step(s, 1.0, 100.0 + s) for s in range(5, 9)]
    return first + second + [{"kind": "summary", "time": 110.0, "steps": 9, "reason": "interrupted"}]


def test_replay_and_plot_of_a_resumed_run_count_each_step_once(tmp_path: Path) -> None:
    events = _resumed_run()
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        fh.writelines(json.dumps(event) + "\n" for event in events)
    standing = list(iter_events(tmp_path))
    assert [e["step"] for e in standing if e["kind"] == "step"] == list(range(9))
    view = make_view(ViewMode.QUIET, Console(file=io.StringIO()))
    assert replay_file(tmp_path, view) == len(standing)
    state = view.state
    assert state.steps_seen == 9 and state.workers[1].disagreements == 9 and state.best_top1 == 0.3
    assert state.last_checkpoint == 5
    curves = load_curves(tmp_path)  # the stale steps 9-11 and the stale eval at 10 are gone, 5-8 are the new ones
    assert curves.loss == {**{s: 9.0 for s in range(5)}, **{s: 1.0 for s in range(5, 9)}}
    assert curves.top1 == {5: 0.3} and curves.timed_steps == 9
    assert curves_from_events(events, "raw") == dataclasses.replace(curves, label="raw")


def test_relay_faults_show_in_the_step_line_and_the_summary() -> None:
    events = _events()
    step = next(e for e in events if e["kind"] == "step")
    step["relay"] = [8]
    summary = next(e for e in events if e["kind"] == "summary")
    summary["relay_workers"] = {"8": 1}
    raw, _ = _run_view(ViewMode.PLAIN, events, width=120)
    lines = raw.splitlines()
    assert sum("relay 8" in line for line in lines if "] step " in line) == 1
    assert "summary: relay       8 (x1)" in lines
    clean, _ = _run_view(ViewMode.PLAIN, _events(), width=120)
    assert not any(line.startswith("summary: relay") for line in clean.splitlines())


def test_the_summary_of_a_resumed_run_labels_the_whole_run_and_this_invocation() -> None:
    """After --resume the PS's summary counts every step of the run but only this invocation's wall time: both
    are said, each for its own span."""
    job = {"kind": "job", "time": 100.0, "scheme": "mols", "workers": 15, "files": 25, "replication": 3,
           "total_steps": 30, "steps_per_epoch": 10, "start_step": 10, "resumed": True}
    steps = [{"kind": "step", "time": 100.0 + 2 * (s - 9), "step": s, "files": 25, "files_won": 25, "loss": 1.0,
              "times": {"total": 1.0}} for s in range(10, 30)]
    summary = {"kind": "summary", "time": 141.0, "steps": 30, "wall_s": 40.0, "reason": "completed"}
    state = fold_all([job, *steps, summary])
    line = next(line for line in summary_lines(state) if line.startswith("summary: steps"))
    assert line == ("summary: steps       30 in all · this invocation, resumed at step 10: 20 in 0:00:40 "
                    "(median 2.000 s/step)")
    fresh = fold_all([dict(job, start_step=0, resumed=False), *steps, summary])
    assert "summary: steps       30 in 0:00:40 (median 2.000 s/step)" in summary_lines(fresh)
    unfinished = fold_all([job, *steps[:5]])  # no summary event: the steps done so far, of the whole run
    assert any(line.startswith("summary: steps       15 in all · this invocation, resumed at step 10: 5 in")
               for line in summary_lines(unfinished))


def _startup_events(workers: int = 15) -> list[dict]:
    """A PS waiting for ``workers`` local agents: a join event per change of its counts (each with a new deadline),
    a connected worker event per agent, one every 0.1 s, then the first step."""
    job = {"kind": "job", "time": 0.0, "scheme": "mols", "workers": workers, "files": 25, "replication": 3,
           "total_steps": 3, "steps_per_epoch": 3, "start_step": 0}
    events: list[dict] = [job, {"kind": "join", "time": 0.0, "ready": 0, "loading": 0, "missing": workers,
                                "left_s": 300.0}]
    for i in range(workers):
        events.append({"kind": "join", "time": 0.1 * i, "ready": 0, "loading": i + 1, "missing": workers - i - 1,
                       "left_s": 1500.0 - i})
    for i in range(workers):
        events.append({"kind": "worker", "time": 2 + 0.1 * i, "step": 0, "worker": i, "state": "connected",
                       "compute_s": None, "address": f"127.0.0.1:{40000 + i}"})
        events.append({"kind": "join", "time": 2 + 0.1 * i, "ready": i + 1, "loading": workers - i - 1,
                       "missing": 0, "left_s": 300.0 if i == workers - 1 else 1500.0})
    events.append({"kind": "step", "time": 5.0, "step": 0, "files": 25, "files_won": 25, "loss": 2.3,
                   "times": {"total": 1.0}})
    return events


def test_plain_start_up_is_one_line_per_change_of_state_rate_limited() -> None:
    """15 agents connecting make a few progress lines (the first, the all-ready one, and at most one per period in
    between), not one per join event and one per connected worker."""
    clock = [0.0]
    lines = StartupLines(period=5.0, clock=lambda: clock[0])
    printed: list[str] = []
    state = ViewState()
    for event in _startup_events():
        state = fold(state, event)
        clock[0] = event["time"]
        line = format_event(event, state)
        if line is not None:
            printed += lines.admit(event, state, line)
        printed += lines.due()
    waiting = [line for line in printed if "waiting for agents" in line]
    assert waiting == ["[+0:00:00] waiting for agents: 0 ready, 0 loading, 15 missing (300s left)",
                       "[+0:00:03] waiting for agents: 15 ready, 0 loading, 0 missing (300s left)"], printed
    assert not any(" connected " in line for line in printed)
    assert sum(" step 1/3 " in line for line in printed) == 1


def test_a_held_progress_line_is_printed_when_its_period_ends() -> None:
    clock = [0.0]
    lines = StartupLines(period=5.0, clock=lambda: clock[0])
    state = fold_all(_startup_events()[:2])
    assert lines.admit({"kind": "join"}, state, "first") == ["first"]
    state = fold(state, {"kind": "join", "time": 1.0, "ready": 3, "loading": 2, "missing": 10, "left_s": 100.0})
    clock[0] = 1.0
    assert lines.admit({"kind": "join"}, state, "held") == [] and lines.due() == []
    clock[0] = 5.5
    assert lines.due() == ["held"] and lines.due() == []
    again = fold(state, {"kind": "join", "time": 6.0, "ready": 3, "loading": 2, "missing": 10, "left_s": 90.0})
    assert lines.admit({"kind": "join"}, again, "same counts") == []  # only the deadline moved


def test_after_the_first_step_every_connected_worker_has_its_line() -> None:
    events = _startup_events(3)
    events.append({"kind": "worker", "time": 6.0, "step": 1, "worker": 1, "state": "connected", "compute_s": None,
                   "address": "127.0.0.1:50001"})
    raw, _ = _run_view(ViewMode.PLAIN, events)
    assert [line for line in raw.splitlines() if " connected " in line] == \
        ["[+0:00:06] worker 1 connected (127.0.0.1:50001)"]
