"""Real Byzantine agents for red-teaming a deployment: ``shield-agent join --adversary NAME[:ARGS]`` (repeatable, so
behaviours compose: ``--adversary hider:0.04 --adversary fake-probe``).

:class:`Name` lists every behaviour and :data:`BEHAVIOURS` maps each to its class (its docstring says what it does
on the wire and what the PS is expected to do about it; docs/adversary.md is generated from the same text). An
honest agent consults :data:`HONEST`; a session consults its :class:`Adversary` at a few named hooks
(:mod:`shield_agent.adversary.base`).
"""
from __future__ import annotations

import enum

from shield_agent.adversary.base import HONEST, Adversary, Behaviour, BehaviourSpec, check_composable
from shield_agent.adversary.compute import (
    Deviator,
    Dropper,
    Forger,
    GrindingCentre,
    Hider,
    OtherClass,
    Scale,
    SilentDisputer,
    SketchLiar,
)
from shield_agent.adversary.params import AdversaryError, read_args
from shield_agent.adversary.probe import FakeProbe, StealthProbe
from shield_agent.adversary.relaying import RelayAccuser, RelayCorrupter, RelayStaller
from shield_agent.adversary.timing import (
    DelayedDigests,
    DelayedFetch,
    Flood,
    ReconnectEveryStep,
    Replay,
    SilentDigests,
    SilentFetch,
    SlowPayload,
    SlowStepReader,
    Trickle,
    WrongLength,
)

__all__ = ["BEHAVIOURS", "HONEST", "Adversary", "AdversaryError", "Behaviour", "BehaviourSpec", "Name",
           "check_composable", "parse_adversary", "parse_adversaries"]


class Name(str, enum.Enum):
    """The behaviours ``--adversary`` accepts."""

    FAKE_PROBE = "fake-probe"
    STEALTH_PROBE = "stealth-probe"
    HIDER = "hider"
    SILENT_DISPUTER = "silent-disputer"
    GRINDING_CENTRE = "grinding-centre"
    SKETCH_LIAR = "sketch-liar"
    DROPPER = "dropper"
    RELAY_STALLER = "relay-staller"
    RELAY_CORRUPTER = "relay-corrupter"
    RELAY_ACCUSER = "relay-accuser"
    OTHER_CLASS = "other-class"
    SCALE = "scale"
    DEVIATOR = "deviator"
    FORGER = "forger"
    TRICKLE = "trickle"
    SLOW_PAYLOAD = "slow-payload"
    SILENT_FETCH = "silent-fetch"
    DELAYED_FETCH = "delayed-fetch"
    SLOW_STEP_READER = "slow-step-reader"
    SILENT_DIGESTS = "silent-digests"
    DELAYED_DIGESTS = "delayed-digests"
    RECONNECT_EVERY_STEP = "reconnect-every-step"
    FLOOD = "flood"
    WRONG_LENGTH = "wrong-length"
    REPLAY = "replay"


#: The registry: every behaviour by name.
BEHAVIOURS: dict[Name, type[Behaviour]] = {
    Name.FAKE_PROBE: FakeProbe,
    Name.STEALTH_PROBE: StealthProbe,
    Name.HIDER: Hider,
    Name.SILENT_DISPUTER: SilentDisputer,
    Name.GRINDING_CENTRE: GrindingCentre,
    Name.SKETCH_LIAR: SketchLiar,
    Name.DROPPER: Dropper,
    Name.RELAY_STALLER: RelayStaller,
    Name.RELAY_CORRUPTER: RelayCorrupter,
    Name.RELAY_ACCUSER: RelayAccuser,
    Name.OTHER_CLASS: OtherClass,
    Name.SCALE: Scale,
    Name.DEVIATOR: Deviator,
    Name.FORGER: Forger,
    Name.TRICKLE: Trickle,
    Name.SLOW_PAYLOAD: SlowPayload,
    Name.SILENT_FETCH: SilentFetch,
    Name.DELAYED_FETCH: DelayedFetch,
    Name.SLOW_STEP_READER: SlowStepReader,
    Name.SILENT_DIGESTS: SilentDigests,
    Name.DELAYED_DIGESTS: DelayedDigests,
    Name.RECONNECT_EVERY_STEP: ReconnectEveryStep,
    Name.FLOOD: Flood,
    Name.WRONG_LENGTH: WrongLength,
    Name.REPLAY: Replay,
}


def parse_adversary(text: str) -> BehaviourSpec:
    """One ``NAME[:ARGS]`` value, validated; AdversaryError (its message lists the allowed names) otherwise."""
    name, sep, args = text.strip().partition(":")
    try:
        behaviour = BEHAVIOURS[Name(name)]
    except ValueError:
        raise AdversaryError(f"unknown behaviour {name!r}; expected NAME[:ARGS] with NAME one of "
                             f"{', '.join(n.value for n in Name)} (docs/adversary.md)") from None
    values = read_args(name, behaviour.params, args if sep else None)
    return BehaviourSpec(behaviour, tuple((p.name, values[p.name]) for p in behaviour.params))


def parse_adversaries(values: list[str] | tuple[str, ...]) -> tuple[BehaviourSpec, ...]:
    """Several values (``--adversary`` repeated), checked to compose."""
    specs = tuple(parse_adversary(v) for v in values)
    check_composable(specs)
    return specs


def hooks_of(behaviour: type[Behaviour]) -> list[str]:
    """The hooks ``behaviour`` uses, in the order of a step (for docs/adversary.md)."""
    used = []
    if behaviour.probe_gradient is not Behaviour.probe_gradient or behaviour.probe_fields is not Behaviour.probe_fields:
        used.append("job (probe)")
    for hook, word in (("on_step", "step"), ("relayed_step", "relayed step")):
        if behaviour.claims(hook):
            used.append(word)
    if behaviour.commit is not Behaviour.commit:
        used.append("commit")
    if behaviour.digest_delay is not Behaviour.digest_delay:
        used.append("digest")
    if behaviour.sketches_input or not behaviour.answers_sketch:
        used.append("sketch")
    if behaviour.claims("on_fetch") or behaviour.forges:
        used.append("fetch")
    if behaviour.claims("relay_request") or behaviour.claims("relay_send"):
        used.append("relay serving")
    return used


def zoo_markdown() -> str:
    """One section per behaviour, from the registry: usage, arguments, hooks, what it does on the wire and what the PS
    is expected to do (docs/adversary.md holds this text; a test keeps them equal)."""
    import inspect

    out = []
    for name, behaviour in BEHAVIOURS.items():
        doc = inspect.cleandoc(behaviour.__doc__ or "")
        wire_text, _, expected = doc.partition("Expected of the PS:")
        usage = name.value + "".join(f"[:{p.name.upper()}]" if i == 0 else f"[,{p.name.upper()}]"
                                     for i, p in enumerate(behaviour.params))
        out.append(f"### `{usage}`\n")
        for p in behaviour.params:
            out.append(f"- `{p.name.upper()}`: {p.help}; {p.allowed}, default `{p.default}`")
        out.append(f"- hooks: {', '.join(hooks_of(behaviour))}\n")
        expected = " ".join(expected.split())
        out.append("**On the wire.** " + " ".join(wire_text.split()).replace("``", "`") + "\n")
        out.append("**Expected of the PS.** " + (expected[:1].upper() + expected[1:]).replace("``", "`") + "\n")
    return "\n".join(out)
