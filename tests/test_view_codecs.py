"""The codecs each direction used (a ``step`` event's ``codecs``, --codec auto) in the view: reading, summing,
formatting, and the plain, live and summary renderings of a run's metrics.jsonl."""
from __future__ import annotations

import io
import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from shield_ps.view import ViewMode, fold_all, make_view, replay_file
from shield_ps.view.codecs import MAX_CODECS, MAX_COUNT, NAME, OTHER, CodecUse, add, read_codecs, shares_text, step_text
from shield_ps.view.fake import fake_run
from shield_ps.view.live import render
from shield_ps.view.state import fold
from shield_ps.view.summary import summary_lines
from tests.tmux_helpers import tmux_screens

STEPS, WORKERS = 24, 15
REPO = Path(__file__).resolve().parents[1]


def _step(step: int, **fields: object) -> dict:
    return {"kind": "step", "time": 1.0 + step, "step": step, "files": 25, "files_won": 25, **fields}


def test_read_codecs_orders_by_use_and_keeps_both_directions() -> None:
    use = read_codecs({"codecs": {"out": {"lz4": 1, "none": 14}, "in": {"zstd": 3, "none": 22}}})
    assert use == CodecUse(out=(("none", 14), ("lz4", 1)), into=(("none", 22), ("zstd", 3)))
    assert read_codecs({"codecs": {"out": {"zstd": 2, "lz4": 2}}}).out == (("lz4", 2), ("zstd", 2))  # ties by name


def test_a_step_without_codecs_or_with_odd_shapes_reads_as_none_or_empty() -> None:
    assert read_codecs({}) is None  # a run from before --codec auto
    for odd in (None, [], "none", 3, True, [["none", 1]]):
        assert read_codecs({"codecs": odd}) is None, odd
    assert read_codecs({"codecs": {}}) == CodecUse()
    assert read_codecs({"codecs": {"out": ["none"], "in": "lz4", "sideways": {"none": 1}}}) == CodecUse()


def test_hostile_entries_are_skipped_one_by_one() -> None:
    entries = {"none": 3, "lz4": True, "zstd": -1, "z0": 0, "z1": 1.5, "z2": "7", "z3": MAX_COUNT + 1, "z4": None,
               "\x1b[31mred": 1, "two\nlines": 1, "": 1, "x" * 17: 1, "ok-name_1.2+": 2}
    use = read_codecs({"codecs": {"out": entries, "in": {"none": MAX_COUNT}}})
    assert use.out == (("none", 3), ("ok-name_1.2+", 2))
    assert use.into == (("none", MAX_COUNT),)
    many = {f"c{i}": i + 1 for i in range(3 * MAX_CODECS)}
    assert len(read_codecs({"codecs": {"out": many}}).out) == MAX_CODECS


def test_totals_sum_per_direction_and_count_the_steps() -> None:
    first = read_codecs({"codecs": {"out": {"none": 14, "lz4": 1}, "in": {"none": 25}}})
    second = read_codecs({"codecs": {"out": {"none": 15}, "in": {"zstd": 5, "none": 20}}})
    assert add(None, None) is None and add(first, None) is first and add(None, first) is first
    total = add(first, second)
    assert total == CodecUse(out=(("none", 29), ("lz4", 1)), into=(("none", 45), ("zstd", 5)), steps=2)


def test_a_run_with_too_many_codec_names_counts_the_rest_as_other() -> None:
    total = None
    for i in range(MAX_CODECS + 3):
        total = add(total, CodecUse(out=((f"c{i}", 1),)))
    assert len(total.out) == MAX_CODECS + 1 and dict(total.out)[OTHER] == 3 and total.steps == MAX_CODECS + 3


def test_step_and_share_texts() -> None:
    use = CodecUse(out=(("none", 14), ("lz4", 1)), into=(("none", 25),))
    assert step_text(use) == "out none×14 lz4×1 · in none×25"
    assert step_text(CodecUse()) == "out - · in -"
    total = CodecUse(out=(("none", 1392), ("lz4", 108)), into=(("none", 600),), steps=100)
    assert shares_text(total) == "out none 92.8% lz4 7.2% (1500 sends) · in none 100% (600 payloads)"
    assert shares_text(CodecUse(out=(("none", 2), ("zstd", 1)))) == "out none 66.7% zstd 33.3% (3 sends) · in -"


def test_fold_keeps_the_latest_step_and_the_run_totals() -> None:
    state = fold_all([_step(0, codecs={"out": {"none": 15}, "in": {"none": 25}}),
                      _step(1, codecs={"out": {"none": 14, "lz4": 1}, "in": {"none": 25}})])
    assert state.codecs.out == (("none", 14), ("lz4", 1))
    assert state.codec_totals == CodecUse(out=(("none", 29), ("lz4", 1)), into=(("none", 50),), steps=2)
    older = fold(state, _step(2))  # a step that does not report codecs: nothing to show for it, the totals stand
    assert older.codecs is None and older.codec_totals == state.codec_totals and older.malformed == 0
    odd = fold(state, _step(2, codecs="lz4"))  # an odd shape is skipped, the step itself still counts
    assert odd.malformed == 0 and odd.steps_seen == 3 and odd.codecs is None
    bad = fold(state, _step(-1, codecs={"out": {"zstd": 1}}))  # a malformed step adds nothing to the totals
    assert bad.malformed == 1 and bad.codec_totals == state.codec_totals
    assert fold_all([_step(0)]).codec_totals is None


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 2 * MAX_COUNT) | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner,
                                                                              max_size=12), max_leaves=40)
CODECS = JSON | st.dictionaries(st.sampled_from(["out", "in", "x"]),
                                JSON | st.dictionaries(st.text(max_size=20), JSON, max_size=12), max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(CODECS, min_size=1, max_size=5))
def test_hostile_codecs_never_raise_and_stay_bounded(values: list) -> None:
    state = fold_all([_step(i, codecs=value) for i, value in enumerate(values)])
    assert state.malformed == 0 and state.steps_seen == len(values)
    for use in (state.codecs, state.codec_totals):
        if use is None:
            continue
        for counts in (use.out, use.into):
            assert len(counts) <= MAX_CODECS + 1
            assert all((NAME.fullmatch(name) or name == OTHER) and count > 0 for name, count in counts)
        assert "\n" not in step_text(use) and "\n" not in shares_text(use)


def _metrics(tmp_path: Path, **kwargs: object) -> tuple[Path, list[dict]]:
    events = list(fake_run(steps=STEPS, workers=WORKERS, eval_every=8, **kwargs))
    with open(tmp_path / "metrics.jsonl", "w") as fh:
        fh.writelines(json.dumps(event) + "\n" for event in events)
    return tmp_path, events


def _replay(run: Path, mode: ViewMode) -> str:
    out = io.StringIO()
    console = Console(record=True, width=100, height=30, file=out, force_terminal=mode is ViewMode.LIVE)
    with make_view(mode, console, refresh_hz=50) as view:
        replay_file(run, view)
    return console.export_text()


def _expected_shares(events: list[dict]) -> str:
    """The summary's shares, summed here straight from the events."""
    parts = []
    for direction, unit in (("out", "sends"), ("in", "payloads")):
        sums: dict[str, int] = {}
        for event in events:
            for name, count in event.get("codecs", {}).get(direction, {}).items():
                sums[name] = sums.get(name, 0) + count
        whole = sum(sums.values())
        shares = " ".join(f"{name} {100 * n / whole:.1f}%".replace(".0%", "%")
                          for name, n in sorted(sums.items(), key=lambda item: -item[1]))
        parts.append(f"{direction} {shares} ({whole} {unit})")
    return " · ".join(parts)


def test_plain_replay_shows_each_steps_codecs_and_the_runs_shares(tmp_path: Path) -> None:
    run, events = _metrics(tmp_path, codecs=True)
    text = _replay(run, ViewMode.PLAIN)
    step_lines = [line for line in text.splitlines() if "] step " in line]
    assert len(step_lines) == STEPS
    for line, event in zip(step_lines, (e for e in events if e["kind"] == "step"), strict=False):
        codecs = event["codecs"]
        out, into = codecs["out"], codecs["in"]
        expected = (f"codec out none×{out['none']}" + (f" lz4×{out['lz4']}" if "lz4" in out else "")
                    + f" · in none×{into['none']}" + (f" lz4×{into['lz4']}" if "lz4" in into else ""))
        assert line.endswith(expected), (line, expected)
    assert any("lz4×1" in line for line in step_lines) and any("lz4" not in line for line in step_lines)
    assert f"summary: codecs      {_expected_shares(events)}" in text.splitlines()


def test_live_replay_shows_the_latest_steps_codecs_and_the_runs_shares(tmp_path: Path) -> None:
    run, events = _metrics(tmp_path, codecs=True)
    text = _replay(run, ViewMode.LIVE)
    last = [e for e in events if e["kind"] == "step"][-1]["codecs"]
    assert last["out"] == {"none": WORKERS - 1, "lz4": 1}  # the fake run's last step switched one link
    assert f"│ codec out none×{WORKERS - 1} lz4×1 · in none×{last['in']['none']} lz4×1 " in text
    assert f"codecs       {_expected_shares(events)}" in text  # the summary panel's row


def test_a_run_from_before_codecs_shows_no_codec_text(tmp_path: Path) -> None:
    run, _ = _metrics(tmp_path)
    for mode in (ViewMode.PLAIN, ViewMode.LIVE):
        assert "codec" not in _replay(run, mode)


def test_the_codec_row_gives_way_on_a_short_terminal_and_never_overflows() -> None:
    state = fold_all(list(fake_run(steps=STEPS, workers=WORKERS, codecs=True)))
    for width in (80, 140):
        shown = []
        for height in range(14, 30):
            console = Console(record=True, width=width, height=height, file=io.StringIO(), force_terminal=True)
            console.print(render(state, width, height))
            lines = console.export_text().rstrip("\n").split("\n")
            assert len(lines) <= height, (width, height)
            shown.append(any("codec out" in line for line in lines))
        assert not shown[0] and all(shown[1:]), (width, shown)  # from 15 lines on there is room for it
    assert not any("codec" in line for line in summary_lines(fold_all(fake_run(steps=3, workers=4))))


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux (Debian package) is not installed")
def test_the_fake_demo_shows_the_codec_row_in_a_real_terminal() -> None:
    """Each step stays 0.3 s on screen: longer than the live panel's redraw period (0.25 s), so each is drawn."""
    command = (f"{shlex.quote(sys.executable)} -m shield_ps.view --fake --steps 6 --workers 6 --pace-ms 300; "
               "echo EXIT=$?")
    screens = tmux_screens(command, cwd=REPO, width=80, height=30, timeout=60, max_screens=500, interval=0.05)
    assert "EXIT=0" in screens[-1], screens[-1]
    rows = {line.strip("│ ") for screen in screens for line in screen.splitlines() if line.startswith("│ codec ")}
    assert "codec out none×5 lz4×1 · in none×24 lz4×1" in rows, rows  # the last step switched a link
    assert any(row.startswith("codec out none×6 · in none×2") for row in rows), rows  # and earlier ones did not
    assert "codecs       out none 94.4% lz4 5.6% (36 sends)" in screens[-1]
