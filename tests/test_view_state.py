"""The view model: run events folded into an immutable state, by golden values and properties."""
from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from shield_ps.view.fake import fake_run
from shield_ps.view.figures import epochs, eta_seconds, final_summary, phase_means, progress, seconds_per_step
from shield_ps.view.state import (
    CATEGORIES,
    CheckpointOutcome,
    EventKind,
    UpdateAction,
    ViewState,
    WorkerState,
    fold,
    fold_all,
)


def _step(step: int, time: float, **fields: object) -> dict:
    event = {"kind": "step", "time": time, "step": step, "epoch": 0, "lr": 0.1, "loss": 1.0, "files": 10,
             "files_won": 10, "files_dropped": 0, "files_corrupted": 0, "lying": [], "outvoted": [], "slow": [],
             "erased": [],
             "times": {"compute": 0.5, "gather": 0.25, "total": 1.0}}
    event.update(fields)
    return event


def _job(**fields: object) -> dict:
    event = {"kind": "job", "time": 0.0, "scheme": "mols", "workers": 4, "files": 10, "replication": 3,
             "total_steps": 20, "steps_per_epoch": 5, "start_step": 0}
    event.update(fields)
    return event


def test_fake_run_totals_match_its_summary() -> None:
    events = list(fake_run(steps=30, workers=9, eval_every=7, byzantine=(2, 5)))
    state = fold_all(events)
    summary = events[-1]
    steps = [e for e in events if e["kind"] == "step"]
    assert state.malformed == 0
    assert state.steps_seen == 30 and progress(state) == (30, 30)
    assert state.files_corrupted == summary["files_corrupted"] == sum(e["files_corrupted"] for e in steps)
    assert state.files_dropped == summary["files_dropped"]
    assert state.steps_skipped == summary["steps_skipped"] == 2 and state.refused == summary["refused"] == 2
    assert state.best_top1 == max(e["top1"] for e in events if e["kind"] == "eval") == summary["best_top1"]
    assert state.last_eval is not None and state.last_eval.step == 30
    assert state.last_checkpoint == summary["last_checkpoint"] == 30 and not state.checkpoint_errors
    for name, attribute in zip(CATEGORIES, ("lies", "disagreements", "slow_steps", "erasures"), strict=False):
        counts = {w: sum(w in e[name] for e in steps) for w in range(9)}
        assert {w: getattr(v, attribute) for w, v in enumerate(state.workers)} == counts, name
        assert summary[f"{name}_workers"] == {str(w): n for w, n in counts.items() if n}, name
    assert set(summary["lying_workers"]) == {"2"}  # the forger; an honest worker outvoted is never here
    assert set(summary["outvoted_workers"]) > {"2", "5"}
    done = final_summary(state)
    assert done.reason == "completed" and done.metrics_complete is True
    assert done.lying_workers == ((2, summary["lying_workers"]["2"]),)
    assert done.outvoted_workers == tuple((int(w), n) for w, n in summary["outvoted_workers"].items())


def test_fold_returns_new_states_and_leaves_the_old_alone() -> None:
    before = fold(ViewState(), _job())
    after = fold(before, _step(0, 1.0, outvoted=[1], lying=[2], slow=[3], files_corrupted=2))
    assert before.step is None and before.workers[1].disagreements == 0
    assert after.step == 0 and after.workers[1].disagreements == 1 and after.workers[1].outvoted_now
    assert not after.workers[1].lying_now and after.workers[1].lies == 0  # outvoted is not lying
    assert after.workers[2].lying_now and after.workers[2].lies == 1 and after.workers[2].disagreements == 0
    assert after.workers[3].slow_now and after.workers[3].slow_steps == 1 and after.workers[3].lies == 0
    again = fold(after, _step(1, 2.0))
    assert not any(w.lying_now or w.outvoted_now or w.slow_now for w in again.workers)
    assert again.workers[1].disagreements == 1 and again.workers[2].lies == 1 and again.workers[3].slow_steps == 1
    assert fold(before, _step(0, 1.0, outvoted=[1], lying=[2], slow=[3], files_corrupted=2)) == after


def test_a_legacy_flagged_field_reads_as_outvoted_never_as_lying() -> None:
    legacy = {k: v for k, v in _step(0, 1.0, flagged=[1, 3]).items() if k not in CATEGORIES}
    legacy["erased"] = [2]
    state = fold_all([_job(), legacy, _step(1, 2.0)])
    assert state.malformed == 0
    assert [w.disagreements for w in state.workers] == [0, 1, 0, 1] and not any(w.lies for w in state.workers)
    assert state.workers[2].erasures == 1
    old_summary = {"kind": "summary", "time": 3.0, "steps": 2, "wall_s": 3.0, "best_top1": None,
                   "final_top1": None, "files_corrupted": 0, "files_dropped": 0, "flagged_workers": [1, 3, 0],
                   "reason": "completed"}
    summary = final_summary(fold(state, old_summary))
    assert summary.outvoted_workers == ((0, None), (1, 1), (3, 1)) and summary.lying_workers == ()
    assert summary.steps_skipped is None and summary.refused is None and summary.metrics_complete is None


def test_aggregation_hedges_and_refused_connections() -> None:
    state = fold_all([_job(), _step(0, 1.0, refused=0),
                      _step(1, 2.0, aggregation={"action": "skip", "s": None, "reason": "1 file survived"}, hedges=2,
                            refused=3),
                      _step(2, 3.0, aggregation={"action": "lower-s", "s": 1, "reason": "fewer files"}, refused=3)])
    assert state.steps_skipped == 1 and state.steps_lowered_s == 1 and state.hedges == 2 and state.refused == 3
    assert state.vote is not None and state.vote.action is UpdateAction.LOWER_S and state.vote.s == 1
    assert not state.vote.refused_rose  # 3 -> 3: nothing new
    skipped = fold_all([_job(), _step(0, 1.0, refused=1), _step(1, 2.0, refused=4,
                                                                aggregation={"action": "skip"})])
    assert skipped.vote is not None and skipped.vote.refused_rose and skipped.vote.action is UpdateAction.SKIP
    # the PS's refused count is per process: a resumed run starts it again
    assert fold(state, _job(time=10.0, resumed=True, start_step=3)).refused == 0


def test_checkpoint_events_and_a_summary_with_checkpoint_errors() -> None:
    state = fold_all([_job(), {"kind": "checkpoint", "time": 1.0, "step": 10, "ok": True, "path": "c/10"},
                      {"kind": "checkpoint", "time": 2.0, "step": 20, "ok": False, "error": "OSError: disk full"}])
    assert state.malformed == 0 and state.last_checkpoint == 10 and state.checkpoint_failures == 1
    assert state.checkpoint == state.checkpoint_errors[0] == CheckpointOutcome(20, False, "OSError: disk full")
    assert final_summary(state).checkpoint_errors == state.checkpoint_errors
    summary = fold(state, {"kind": "summary", "time": 3.0, "steps": 20, "reason": "failed: the final checkpoint was "
                           "not written", "checkpoint_errors": [{"step": 20, "error": "OSError: disk full"}],
                           "last_checkpoint": 10, "metrics_complete": False, "lying_workers": {"4": 2},
                           "outvoted_workers": {}, "slow_workers": {"1": 3}, "erased_workers": {},
                           "steps_skipped": 0, "steps_lowered_s": 0, "refused": 5}).summary
    assert summary is not None and summary.checkpoint_failures == 1 and summary.last_checkpoint == 10
    assert summary.checkpoint_errors == (CheckpointOutcome(20, False, "OSError: disk full"),)
    assert summary.metrics_complete is False and summary.lying_workers == ((4, 2),) and summary.refused == 5
    assert summary.slow_workers == ((1, 3),) and summary.outvoted_workers == ()


def test_eta_from_the_recent_step_rate() -> None:
    state = fold_all([_job(total_steps=20)] + [_step(s, 2.0 * s) for s in range(10)])
    assert progress(state) == (10, 20)
    assert seconds_per_step(state) == 2.0
    assert eta_seconds(state) == 20.0
    assert epochs(state) == (1, 4) and epochs(fold(state, _step(10, 20.0, epoch=2))) == (3, 4)
    assert epochs(fold_all([_job(steps_per_epoch=0), _step(0, 1.0)])) is None
    assert eta_seconds(fold_all([_job(), _step(0, 1.0)])) is None  # one step: no rate yet


def test_resume_restarts_the_rate_window_but_keeps_totals() -> None:
    state = fold_all([_job()] + [_step(s, float(s), files_corrupted=1) for s in range(5)])
    resumed = fold(state, _job(time=1000.0, start_step=5, resumed=True))
    assert resumed.recent == () and resumed.files_corrupted == 5 and resumed.job is not None
    assert resumed.job.resumed and resumed.job.start_step == 5
    resumed = fold_all([_step(5, 1001.0), _step(6, 1002.0)], resumed)
    assert seconds_per_step(resumed) == 1.0


def test_worker_events_track_state_and_keep_the_last_compute_time() -> None:
    state = fold_all([_job(),
                      {"kind": "worker", "time": 1.0, "step": 0, "worker": 2, "state": "computing", "compute_s": 0.3},
                      {"kind": "worker", "time": 2.0, "step": 0, "worker": 2, "state": "late", "compute_s": None,
                       "address": "10.0.0.2:9000"}])
    worker = state.workers[2]
    assert worker.state is WorkerState.LATE and worker.compute_s == 0.3 and worker.address == "10.0.0.2:9000"
    assert state.workers[0].state is WorkerState.UNKNOWN and len(state.workers) == 4


def test_phase_means_and_a_summary_built_without_a_summary_event() -> None:
    state = fold_all([_job(), _step(0, 1.0, outvoted=[3], lying=[1]),
                      _step(1, 3.0, times={"compute": 1.5, "total": 2.0}),
                      {"kind": "eval", "time": 3.0, "step": 2, "top1": 0.5, "top5": 0.9, "loss": 1.2}])
    assert phase_means(state) == {"compute": 1.0, "gather": 0.125, "total": 1.5}
    summary = final_summary(state)
    assert summary.reason == "no summary received" and summary.steps == 2 and summary.wall_s == 3.0
    assert summary.outvoted_workers == ((3, 1),) and summary.lying_workers == ((1, 1),)
    assert summary.best_top1 == summary.final_top1 == 0.5


MALFORMED = [
    None, 7, "step", [], {}, {"kind": "nope", "time": 1.0}, {"kind": "step"},
    _step("3", 1.0), _step(True, 1.0), _step(1, float("nan")), _step(1, 1.0, lr="fast"),
    _step(1, 1.0, outvoted=[1, "2"]), _step(1, 1.0, lying=[10**9]), _step(1, 1.0, slow=[[1]]),
    {k: v for k, v in _step(1, 1.0, flagged=[-1]).items() if k != "outvoted"},
    _step(1, 1.0, aggregation={"action": "shrug"}), _step(1, 1.0, aggregation=[]),
    _step(1, 1.0, hedges=-1), _step(1, 1.0, refused="many"),
    {"kind": "checkpoint", "time": 1.0, "step": 1, "ok": "yes"}, {"kind": "checkpoint", "time": 1.0, "ok": True},
    {"kind": "summary", "time": 1.0, "lying_workers": {"x": 1}}, {"kind": "summary", "time": 1.0,
                                                                   "outvoted_workers": {"1": -1}},
    {"kind": "summary", "time": 1.0, "slow_workers": [1]},
    {"kind": "summary", "time": 1.0, "erased_workers": {"9999": 1}},
    {"kind": "summary", "time": 1.0, "checkpoint_errors": [7]}, {"kind": "summary", "time": 1.0, "metrics_complete": 1},
    _step(1, 1.0, times=[0.1]), _step(1, 1.0, times={"compute": "x"}),
    {"kind": "worker", "time": 1.0, "worker": 10**9, "state": "done"},
    {"kind": "worker", "time": 1.0, "worker": -1, "state": "done"},
    {"kind": "worker", "time": 1.0, "worker": 1, "state": "dancing"},
    {"kind": "eval", "time": 1.0, "step": 1, "top1": None},
    _job(workers=10**9), _job(workers="many"), _step(-1, 1.0), _step(1, 1.0, files_corrupted=-5),
]


def test_malformed_events_are_counted_and_change_nothing_else() -> None:
    base = fold_all([_job(), _step(0, 1.0)])
    for event in MALFORMED:
        after = fold(base, event)
        assert after.malformed == base.malformed + 1, event
        assert fold(after, {"kind": "step"}).malformed == base.malformed + 2


SCALARS = st.none() | st.booleans() | st.integers(-3, 10**10) | st.floats() | st.text(max_size=4)
JSON = SCALARS | st.lists(SCALARS, max_size=4) | st.dictionaries(
    st.sampled_from(["compute", "total", "x", "action", "s", "1", "4096"]), SCALARS, max_size=3)
FIELDS = ["time", "step", "epoch", "lr", "loss", "files", "files_won", "files_dropped", "files_corrupted", "flagged",
          "lying", "outvoted", "slow", "erased", "aggregation", "hedges", "refused", "times", "worker", "state",
          "compute_s", "address", "top1", "top5", "workers", "total_steps", "steps", "wall_s", "flagged_workers",
          "lying_workers", "outvoted_workers", "slow_workers", "erased_workers", "steps_skipped", "checkpoint_errors",
          "last_checkpoint", "metrics_complete", "ok", "error", "reason"]
EVENTS = st.fixed_dictionaries({"kind": st.sampled_from([k.value for k in EventKind] + ["x"])},
                               optional={name: JSON for name in FIELDS})


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENTS, max_size=6))
def test_hostile_events_never_raise_and_keep_the_state_sane(events: list[dict]) -> None:
    state = fold_all(events)
    assert isinstance(state, ViewState)
    assert len(state.workers) <= 4096
    assert min(state.files_corrupted, state.files_dropped, state.steps_seen, state.malformed, state.refused,
               state.steps_skipped, state.hedges, state.checkpoint_failures) >= 0
    assert len(state.checkpoint_errors) <= 64
    assert state.step is None or state.step >= 0
    for value in (state.lr, state.loss, state.now):
        assert value is None or math.isfinite(value)
