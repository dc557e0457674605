"""Typed messages (wire.messages, wire.job): header() -> real frame -> parse_* round-trips, every header built the
way the PS and the agent built them by hand before keeps its exact keys and value types, and hostile headers (random
plain values, each field of a good header replaced or dropped) raise only MessageError."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire import Kind, encode_frame, parse_frame
from wire.errors import MessageError, ProtocolError
from wire.job import JobAccept, JobFingerprint, JobOffer, ProbeSpec, parse_job_accept, parse_job_offer
from wire.messages import (
    DigestReport,
    EventMessage,
    FetchRequest,
    Leave,
    RelayComplaint,
    RelayInstruction,
    RelayRequest,
    StepOrder,
    VectorReply,
    parse_digest_report,
    parse_event,
    parse_fetch_request,
    parse_leave,
    parse_relay_complaint,
    parse_relay_request,
    parse_step_order,
    parse_vector_reply,
)

D = b"d" * 32
OFFER = JobOffer(3, (0, 4, 7), "LeNet", "MNIST", 42, 80, 8, 1, "lz4", 1, synthetic_d=1000,
                 network_digest="ab" * 32, probe=ProbeSpec(0, 0, b"s" * 32, 256, 32), train_samples=60000)
ACCEPT = JobAccept(1000, 3, JobFingerprint({"torch": "2.1", "threads": 1, "mkl": True}, D, b"\0" * 8, 1.5), 7001,
                   b"i" * 16, None, "cd" * 32)

#: Each kind: its parser, good values (round-trip) and, for the hand-written headers they replace, that exact dict.
CASES: list[tuple[Kind, Callable[[dict[str, Any]], Any], Any, dict[str, Any]]] = [
    (Kind.STEP, parse_step_order, StepOrder(5, 0.1, D), {"step": 5, "lr": 0.1, "params_digest": D}),
    (Kind.STEP, parse_step_order, StepOrder(5, 0.1, D, RelayInstruction(2, "10.0.0.1", 7001, 0.25)),
     {"step": 5, "lr": 0.1, "params_digest": D, "relay": {"worker": 2, "host": "10.0.0.1", "port": 7001,
                                                           "wait": 0.25}}),
    (Kind.DIGESTS, parse_digest_report, DigestReport(5, 3, D, 2.25, 0.5),
     {"step": 5, "file": 3, "digest": D, "loss": 2.25, "seconds": 0.5}),
    (Kind.DIGESTS, parse_digest_report, DigestReport(5, 3, D, None, 0.0),
     {"step": 5, "file": 3, "digest": D, "loss": None, "seconds": 0.0}),
    (Kind.FETCH, parse_fetch_request, FetchRequest(5, 3), {"step": 5, "file": 3}),
    (Kind.VECTOR, parse_vector_reply, VectorReply(5, 3), {"step": 5, "file": 3}),
    (Kind.VECTOR, parse_vector_reply, VectorReply(5), {"step": 5}),
    (Kind.RELAY, parse_relay_request, RelayRequest(5, D, 1.5), {"step": 5, "digest": D, "wait": 1.5}),
    (Kind.RELAY, parse_relay_complaint, RelayComplaint(5, "stalled"), {"step": 5, "reason": "stalled"}),
    (Kind.LEAVE, parse_leave, Leave("spot interruption"), {"reason": "spot interruption"}),
    (Kind.EVENT, parse_event, EventMessage({"kind": "step", "step": 1}), {"event": {"kind": "step", "step": 1}}),
    (Kind.JOB, parse_job_offer, OFFER,
     {"worker": 3, "files": [0, 4, 7], "network": "LeNet", "dataset": "MNIST", "seed": 42, "batch_size": 80,
      "num_files": 8, "threads": 1, "codec": "lz4", "codec_level": 1, "synthetic_d": 1000,
      "network_digest": "ab" * 32, "probe": {"step": 0, "file": 0, "seed": b"s" * 32, "rows": 256, "width": 32},
      "train_samples": 60000}),
    (Kind.JOB, parse_job_accept, ACCEPT,
     {"num_params": 1000, "worker": 3, "environment": {"torch": "2.1", "threads": 1, "mkl": True},
      "probe_digest": D, "probe_sketch": b"\0" * 8, "probe_norm": 1.5, "relay_port": 7001, "relay_id": b"i" * 16,
      "dataset_digest": "cd" * 32}),
    (Kind.JOB, parse_job_accept, JobAccept(1000, 3), {"num_params": 1000, "worker": 3}),
]
IDS = [f"{kind.value}-{i}" for i, (kind, *_) in enumerate(CASES)]


#: Fields that may be negative (a seed, a codec level, a loss).
SIGNED = {"seed", "codec_level", "loss"}


def _through_wire(kind: Kind, header: dict[str, Any]) -> dict[str, Any]:
    frame, _ = parse_frame(encode_frame(kind, header))
    return frame.header


def _same(a: Any, b: Any) -> bool:
    """Equal, with equal types all the way down (1 and 1.0 and True are different on the wire)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("kind, parse, message, wire_dict", CASES, ids=IDS)
def test_header_is_todays_dict_and_round_trips(kind, parse, message, wire_dict) -> None:
    assert _same(message.header(), wire_dict)
    assert parse(_through_wire(kind, message.header())) == message


PLAIN = st.recursive(st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats()
                     | st.text(max_size=20) | st.binary(max_size=40),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=4), max_leaves=12)


def _parse_only_typed_errors(parse: Callable[[dict[str, Any]], Any], header: dict[str, Any]) -> None:
    try:
        parse(header)
    except MessageError as exc:
        assert isinstance(exc, ProtocolError) and exc.code == "message"
        assert exc.field and exc.kind


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.parametrize("kind, parse, message, wire_dict", CASES, ids=IDS)
@given(data=st.data())
def test_hostile_headers_raise_only_message_error(kind, parse, message, wire_dict, data) -> None:
    good = message.header()
    header = data.draw(st.one_of(
        st.dictionaries(st.sampled_from(sorted(good)) | st.text(max_size=8), PLAIN, max_size=8),
        st.builds(lambda key, value: {**good, key: value}, st.sampled_from(sorted(good)), PLAIN),
        st.builds(lambda key: {k: v for k, v in good.items() if k != key}, st.sampled_from(sorted(good)))))
    _parse_only_typed_errors(parse, _through_wire(kind, header))


@pytest.mark.parametrize("kind, parse, message, wire_dict", CASES, ids=IDS)
def test_every_required_field_is_required_and_typed(kind, parse, message, wire_dict) -> None:
    """Dropping a field either keeps a valid message (it is optional) or is a MessageError naming that field; a
    bool, a string or a nested list in its place is always refused (or, optional, never silently accepted as that
    value)."""
    good = message.header()
    for key in good:
        dropped = {k: v for k, v in good.items() if k != key}
        try:
            parse(dropped)
        except MessageError as exc:
            assert exc.field in (key, "probe_norm")
        for bad in (True, "x" * 5000, [[1]], -1, math.nan):
            if _same(bad, good[key]) or (bad == -1 and key in SIGNED):
                continue
            with pytest.raises(MessageError):
                parse({**good, key: bad})


@pytest.mark.parametrize("parse, header, field", [
    (parse_digest_report, {"step": 1, "file": 1, "digest": D, "loss": math.inf, "seconds": 0.0}, "loss"),
    (parse_digest_report, {"step": 1, "file": 1, "digest": D, "loss": True, "seconds": 0.0}, "loss"),
    (parse_digest_report, {"step": 1, "file": 1, "digest": D, "loss": None, "seconds": 1e6}, "seconds"),
    (parse_digest_report, {"step": 1, "file": 1 << 16, "digest": D, "loss": None, "seconds": 0}, "file"),
    (parse_digest_report, {"step": 1, "file": 1, "digest": D[:31], "loss": None, "seconds": 0}, "digest"),
    (parse_fetch_request, {"step": -1, "file": 0}, "step"),
    (parse_relay_request, {"step": 1, "digest": D, "wait": 0}, "wait"),
    (parse_relay_request, {"step": 1, "digest": D, "wait": 900.5}, "wait"),
    (parse_relay_complaint, {"step": 1, "reason": "bored"}, "reason"),
    (parse_step_order, {"step": 1, "lr": 0.1, "params_digest": D, "relay": {"worker": 1, "host": "", "port": 1,
                                                                           "wait": 1}}, "host"),
    (parse_step_order, {"step": 1, "lr": 0.1, "params_digest": D, "relay": [1]}, "relay"),
    (parse_job_offer, {**OFFER.header(), "files": [0, 8]}, "files"),
    (parse_job_offer, {**OFFER.header(), "codec": "gzip"}, "codec"),
    (parse_job_offer, {**OFFER.header(), "probe": {"step": 0, "file": 0, "seed": b"s", "rows": 8, "width": 1}},
     "probe"),
    (parse_job_accept, {**ACCEPT.header(), "environment": {str(i): i for i in range(33)}}, "environment"),
    (parse_job_accept, {**ACCEPT.header(), "relay_id": b"i" * 15}, "relay_id"),
    (parse_job_accept, {**ACCEPT.header(), "network_digest": "AB" * 32}, "network_digest"),
    (parse_leave, {"reason": 7}, "reason"),
])
def test_refused_fields_are_named(parse, header, field) -> None:
    with pytest.raises(MessageError) as refused:
        parse(header)
    assert refused.value.field == field


def test_every_parser_is_exercised_here() -> None:
    """A new parse_* in wire.messages or wire.job gets a round-trip case above (the sub-parsers of a field are
    exercised through their message)."""
    import wire.job
    import wire.messages

    parsers = {getattr(module, name) for module in (wire.messages, wire.job) for name in dir(module)
               if name.startswith("parse_") and getattr(module, name).__module__ == module.__name__}
    parsers -= {wire.messages.parse_relay_instruction, wire.job.parse_probe_spec, wire.job.parse_job_fingerprint}
    assert parsers == {parse for _, parse, _, _ in CASES}


@pytest.mark.parametrize("change, code", [
    ({"environment": "x"}, "fingerprint"), ({"probe_digest": b"x"}, "fingerprint"),
    ({"probe_norm": -1.0}, "fingerprint"),
    ({"num_params": "1000"}, "job"), ({"relay_port": 0}, "job"), ({"dataset_digest": "x"}, "job"),
    ({"num_params": None, "environment": 7}, "fingerprint"),
])
def test_the_ps_closes_a_bad_job_reply_with_the_code_of_its_field(change: dict, code: str) -> None:
    from shield_ps.daemon import bad_reply_code

    with pytest.raises(MessageError) as refused:
        parse_job_accept({**ACCEPT.header(), **change})
    assert bad_reply_code(refused.value) == code
