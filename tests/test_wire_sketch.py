"""SKETCH messages: a round trip through real frames, the role policy, and every refused field."""
from __future__ import annotations

import pytest

from wire import ROLE_SENDS, Kind, Role, encode_frame, parse_frame
from wire.sketch import (
    MAX_SKETCH_BYTES,
    SketchAnswer,
    SketchHeaderError,
    SketchRequest,
    parse_sketch_answer,
    parse_sketch_request,
)

F = 25


def _through_wire(header: dict) -> dict:
    frame, payload = parse_frame(encode_frame(Kind.SKETCH, header))
    assert frame.kind is Kind.SKETCH and not len(payload)
    return frame.header


def test_request_and_answer_round_trip() -> None:
    req = SketchRequest(7, b"s" * 32, (3, 0, 24), 256, 32)
    assert parse_sketch_request(_through_wire(req.header()), F) == req
    ans = SketchAnswer(7, 3, b"\x00" * req.nbytes, 12.5)
    assert parse_sketch_answer(_through_wire(ans.header()), F, req.nbytes) == ans
    none = SketchAnswer(7, 3, None, None)
    assert parse_sketch_answer(_through_wire(none.header()), F, req.nbytes) == none


def test_agents_may_send_sketches_observers_may_not() -> None:
    assert Kind.SKETCH in ROLE_SENDS[Role.AGENT] and Kind.SKETCH not in ROLE_SENDS[Role.OBSERVER]


GOOD = {"step": 1, "seed": b"s" * 32, "files": [1, 2], "rows": 256, "width": 32}


@pytest.mark.parametrize("change, match", [
    ({"step": -1}, "step"), ({"step": True}, "step"), ({"seed": b"x"}, "seed"), ({"seed": "s" * 32}, "seed"),
    ({"files": []}, "files"), ({"files": [1, 1]}, "distinct"), ({"files": [F]}, "distinct"), ({"files": "1"}, "files"),
    ({"rows": 12}, "multiple of 8"), ({"rows": 4}, "rows"), ({"width": 0}, "width"),
    ({"rows": 1024, "width": 1024}, "within"),
])
def test_bad_requests_are_refused(change: dict, match: str) -> None:
    with pytest.raises(SketchHeaderError, match=match):
        parse_sketch_request({**GOOD, **change}, F)
    assert MAX_SKETCH_BYTES < 256 * 1024


@pytest.mark.parametrize("header, match", [
    ({"step": 1, "file": F, "sketch": None, "norm": None}, "file"),
    ({"step": 1, "file": 0, "sketch": None, "norm": 1.0}, "no norm"),
    ({"step": 1, "file": 0, "sketch": b"\0" * 15, "norm": 1.0}, "16 bytes"),
    ({"step": 1, "file": 0, "sketch": b"\0" * 16, "norm": float("nan")}, "norm"),
    ({"step": 1, "file": 0, "sketch": b"\0" * 16, "norm": -1.0}, "norm"),
    ({"step": 1, "file": 0, "sketch": b"\0" * 16, "norm": "1"}, "norm"),
    ({"file": 0, "sketch": None, "norm": None}, "step"),
])
def test_bad_answers_are_refused(header: dict, match: str) -> None:
    with pytest.raises(SketchHeaderError, match=match):
        parse_sketch_answer(header, F, 16)
