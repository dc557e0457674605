"""The adversary zoo (shield_agent.adversary): the registry, ``--adversary`` parsing and its errors, composition, the
documented text, and the vector arithmetic of each behaviour that changes what an agent commits or claims."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from byzantine.sketch import SketchParams, SketchReply, relative_spread
from shield_agent.adversary import (
    BEHAVIOURS,
    HONEST,
    Adversary,
    AdversaryError,
    Name,
    parse_adversaries,
    parse_adversary,
    zoo_markdown,
)
from shield_agent.adversary.vectors import direction
from shield_agent.fingerprint import probe_fields
from shield_model.synthetic import SyntheticComputer
from wire import digest_bytes

REPO = Path(__file__).resolve().parent.parent
D = 5000


def _g(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(D).astype(np.float32)


def _committed(spec: str, step: int = 3, file: int = 1, worker: int = 4, seed: int = 0) -> np.ndarray:
    return Adversary(parse_adversaries([spec])).commit(_g(seed), step, file, worker)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


# ---- registry and parsing ----------------------------------------------------------------------------------------
def test_every_name_is_registered_with_its_docs_and_parses_with_its_defaults() -> None:
    assert set(BEHAVIOURS) == set(Name)
    for name, behaviour in BEHAVIOURS.items():
        assert behaviour.name == name.value
        assert "Expected of the PS:" in (behaviour.__doc__ or ""), name
        spec = parse_adversary(name.value)
        assert dict(spec.args) == {p.name: p.default for p in behaviour.params}
        assert parse_adversary(str(spec)) == spec  # the canonical text round-trips


def test_arguments_are_typed_positional_or_by_name_and_validated() -> None:
    assert dict(parse_adversary("sketch-liar:0.02,non-centre").args) == {"rel": 0.02, "role": "non-centre",
                                                                        "bits": 8}
    assert dict(parse_adversary("sketch-liar:bits=3,rel=0.5").args) == {"rel": 0.5, "role": "centre", "bits": 3}
    assert np.isnan(dict(parse_adversary("scale:nan").args)["factor"])
    for bad, words in [("nope", "one of fake-probe, stealth-probe, hider"), ("hider:x", "delta must be a number"),
                       ("hider:-1", "in [0, 10]"), ("hider:1,2", "too many"), ("trickle:", "empty"),
                       ("sketch-liar:role=middle", "centre or non-centre"), ("forger:1", "takes no arguments"),
                       ("hider:delta=1,delta=2", "twice"), ("relay-accuser:who=3", "no argument 'who'"),
                       ("hider:inf", "number")]:
        with pytest.raises(AdversaryError, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_adversary(bad)


def test_behaviours_compose_unless_two_decide_the_same_thing() -> None:
    adversary = Adversary(parse_adversaries(["other-class", "hider:0.04", "fake-probe", "silent-fetch"]))
    assert adversary.commits and adversary.takes("on_fetch") is not None and adversary.answers_sketch
    for clash in (["trickle", "silent-fetch"], ["grinding-centre", "delayed-fetch"], ["replay", "flood"],
                  ["hider", "hider"], ["sketch-liar", "sketch-liar:0.1"], ["relay-staller", "relay-staller"]):
        with pytest.raises(AdversaryError):
            parse_adversaries(clash)
    assert HONEST.honest and not HONEST.commits and not HONEST.forges and HONEST.answers_sketch
    assert all(HONEST.takes(hook) is None for hook in ("on_step", "on_fetch", "relayed_step", "relay_request"))


def test_a_bad_adversary_is_a_one_line_error_listing_the_names_and_exit_2() -> None:
    for value, words in [("sneaky", "fake-probe, stealth-probe"), ("hider:big", "delta must be"),
                         ("trickle --adversary silent-fetch", "cannot be combined")]:
        done = subprocess.run([sys.executable, "-m", "shield_agent.cli", "join", "127.0.0.1:1", "--token", "t" * 32,
                               "--adversary", *value.split(" --adversary ")[:1],
                               *(["--adversary", value.split(" --adversary ")[1]] if " --adversary " in value
                                 else [])],
                              capture_output=True, text=True, timeout=120, cwd=REPO)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "--adversary" in lines[0] and words in lines[0], done.stderr


def test_the_docs_hold_every_behaviour_as_the_registry_describes_it() -> None:
    text = (REPO / "docs" / "adversary.md").read_text()
    assert zoo_markdown() in text
    assert "docs/adversary.md" in (REPO / "README.md").read_text()
    assert "adversary.md" in (REPO / "docs" / "byzantine.md").read_text()


# ---- what each behaviour commits -----------------------------------------------------------------------------
def test_hider_commits_a_fixed_direction_the_same_for_every_hider() -> None:
    a, b = _committed("hider:0.04", worker=1), _committed("hider:0.04", worker=7)
    assert a.tobytes() == b.tobytes()  # co-holders agree bit for bit
    assert _rel(a, _g()) == pytest.approx(0.04, rel=1e-3)
    u = direction(D, 0x48494445)
    for step, file, seed in ((0, 0, 1), (9, 5, 2)):
        shift = _committed("hider:0.04", step, file, seed=seed).astype(np.float64) - _g(seed)
        assert float(np.dot(shift, u)) / float(np.linalg.norm(shift)) > 0.999  # always along U


def test_dropper_garbage_differs_per_worker_and_silent_disputer_by_one_ulp() -> None:
    a, b = _committed("dropper", worker=1), _committed("dropper", worker=2)
    assert _rel(a, _g()) == pytest.approx(1.0, rel=1e-3) and _rel(a, b) > 1.0
    one, two = _committed("silent-disputer", worker=1), _committed("silent-disputer", worker=2)
    honest = _g()
    assert len({digest_bytes(memoryview(v).cast("B")) for v in (one, two, honest)}) == 3
    assert int(np.count_nonzero(one != honest)) == 1 and _rel(one, honest) < 1e-7
    assert not Adversary(parse_adversaries(["silent-disputer"])).answers_sketch


def test_other_class_offsets_every_gradient_and_its_probe_alike() -> None:
    a, b = _committed("other-class:3e-7", worker=1), _committed("other-class:3e-7", worker=6)
    assert a.tobytes() == b.tobytes() and a.tobytes() != _g().tobytes()
    assert _rel(a, _g()) == pytest.approx(3e-7, rel=0.3)  # float32 rounding of a tiny offset
    computer = SyntheticComputer(D, 0, 0.0)
    probe = {"step": 0, "file": 0, "seed": bytes(32), "rows": 64, "width": 8}
    honest = probe_fields(computer, probe, 1)
    other = probe_fields(computer, probe, 1, Adversary(parse_adversaries(["other-class:3e-7"])))
    assert other["probe_digest"] != honest["probe_digest"]
    assert other["environment"]["modelled_class"] == "other-class:3e-07"
    first = computer.file_gradient(computer.initial_parameters(), 0, 0).gradient.copy()
    assert other["probe_digest"] == digest_bytes(memoryview(_adv_commit("other-class:3e-7", first)).cast("B"))


def _adv_commit(spec: str, gradient: np.ndarray) -> np.ndarray:
    return Adversary(parse_adversaries([spec])).commit(gradient, 0, 0, 0)


def test_sketch_liar_keeps_the_vector_it_sketches_and_grinds_to_be_or_never_be_the_centre() -> None:
    for role, top in (("centre", 0), ("non-centre", 0b1111)):
        adversary = Adversary(parse_adversaries(["other-class:1e-6", f"sketch-liar:0.01,{role},4"]))
        kept: dict[int, np.ndarray] = {}
        committed = adversary.commit(_g(), 3, 1, 4, keep=kept)
        assert digest_bytes(memoryview(committed).cast("B"))[0] >> 4 == top
        sketched = adversary.commit(_g(), 3, 1, 4, upto=adversary.sketch_stage)  # the regeneration's vector
        assert kept[1].tobytes() == sketched.tobytes()
        assert kept[1].tobytes() == _committed("other-class:1e-6").tobytes()
        assert _rel(committed, kept[1]) == pytest.approx(0.01, rel=1e-2)


def test_forger_negates_the_payload_only() -> None:
    adversary = Adversary(parse_adversaries(["forger"]))
    g = _g()
    assert not adversary.commits and adversary.forge(g).tobytes() == (-g).tobytes()
    out = g.copy()
    adversary.forge(out, out)
    assert out.tobytes() == (-g).tobytes()


def test_probe_liars_claim_a_distant_probe_with_or_without_their_own_digest() -> None:
    computer = SyntheticComputer(D, 0, 0.0)
    params = SketchParams(rows=64, width=8)
    probe = {"step": 0, "file": 0, "seed": bytes(range(32)), "rows": 64, "width": 8}
    honest = probe_fields(computer, probe, 1)
    fake = probe_fields(computer, probe, 1, Adversary(parse_adversaries(["fake-probe:0.02"])))
    stealth = probe_fields(computer, probe, 1, Adversary(parse_adversaries(["stealth-probe:0.02"])))
    assert fake["probe_digest"] != honest["probe_digest"] and stealth["probe_digest"] == honest["probe_digest"]
    assert fake["probe_sketch"] == stealth["probe_sketch"] != honest["probe_sketch"]

    def reply(fields: dict) -> SketchReply:
        values = np.frombuffer(fields["probe_sketch"], "<f8").reshape(params.rows, params.width)
        return SketchReply(values.astype(np.float64), fields["probe_norm"])

    assert relative_spread([reply(honest), reply(fake)]) == pytest.approx(0.02, rel=0.3)
    assert fake["environment"] == honest["environment"]  # it pretends to be the same machine
