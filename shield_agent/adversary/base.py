"""The hooks an agent session consults, one :class:`Behaviour` per ``--adversary`` value, and the
:class:`Adversary` that composes them.

An honest session consults :data:`HONEST` (no behaviours): every hook is then a constant or the identity, so the
honest path is the plain one. The hooks, in the order of a step:

* **job** (:meth:`Behaviour.probe_gradient`, :meth:`Behaviour.probe_fields`): the probe gradient, and the JOB
  reply's fingerprint fields (environment, probe digest, probe sketch and norm).
* **step** (:meth:`Behaviour.on_step`): take over a STEP message (timing behaviours).
* **relayed step** (:meth:`Behaviour.relayed_step`): take over fetching the parameters from the relay the PS named
  (RELAY complaints).
* **commit** (:meth:`Behaviour.commit`): what a file's gradient becomes before it is digested, i.e. what the agent
  commits to (a pure function of the gradient, step, file and worker, run off the event loop).
* **sketch** (:attr:`Behaviour.sketches_input`, :attr:`Behaviour.answers_sketch`): what to sketch (the committed
  vector, or what came into this behaviour's commit) and whether to answer SKETCH at all.
* **fetch** (:meth:`Behaviour.on_fetch`, :meth:`Behaviour.forge`): take over a FETCH, or change the payload sent.
* **relay serving** (:meth:`Behaviour.relay_request`, :meth:`Behaviour.relay_send`): take over a relay request
  from another agent, or the send of the vector to it.

Commits apply in the order the behaviours were given; the takeover hooks (step, relayed step, fetch, relay request,
relay send) and the sketch source may be claimed by one behaviour each: :func:`check_composable` refuses two.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from shield_agent.adversary.params import AdversaryError, Param

if TYPE_CHECKING:
    from shield_agent.client import AgentSession
    from shield_agent.relay import RelaySource
    from shield_agent.relay_store import RelayEntry, RelayStore
    from wire import Connection, Message

#: The takeover hooks: a behaviour claims one by overriding the method.
TAKEOVERS = ("on_step", "relayed_step", "on_fetch", "relay_request", "relay_send")


class Behaviour:
    """One Byzantine (or modelled) behaviour: its name, typed arguments and the hooks it overrides.

    Subclasses set :attr:`name` and :attr:`params` and override hooks; the docstring's first line is what the
    behaviour does on the wire and the rest what the PS is expected to do about it (docs/adversary.md)."""

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    sketches_input: ClassVar[bool] = False  # sketch what came into commit(), not the committed vector
    answers_sketch: ClassVar[bool] = True
    forges: ClassVar[bool] = False

    def __init__(self, **args: Any) -> None:
        self.args = args

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.args.items())})"

    @classmethod
    def claims(cls, hook: str) -> bool:
        """Whether this behaviour overrides ``hook``."""
        return getattr(cls, hook) is not getattr(Behaviour, hook)

    # ---- job -------------------------------------------------------------------------------------------------
    def probe_gradient(self, gradient: np.ndarray, step: int, file: int) -> None:
        """Change the probe gradient in place (a modelled class offsets it as it offsets every gradient)."""

    def probe_fields(self, fields: dict[str, Any], gradient: np.ndarray, probe: dict[str, Any]) -> None:
        """Change the JOB reply's fingerprint fields in place (``gradient``: the probe gradient, as computed)."""

    # ---- compute ---------------------------------------------------------------------------------------------
    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int) -> None:
        """Change ``gradient`` in place into what the agent commits to (its digest is sent). Pure; off the loop."""

    @property
    def commits(self) -> bool:
        return type(self).commit is not Behaviour.commit

    def digest_delay(self, step: int, file: int) -> float:
        """Seconds to hold the digest of ``file`` before sending it (0: at once, as an honest agent does)."""
        return 0.0

    def forge(self, payload: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The payload sent on FETCH instead of the committed vector (``forges`` behaviours only)."""
        return payload

    # ---- takeovers (async, on the event loop) ----------------------------------------------------------------
    async def on_step(self, session: AgentSession, msg: Message) -> None:
        """Handle a STEP instead of the honest session (``session.honest_step(msg)`` is the honest handling)."""
        await session.honest_step(msg)

    async def relayed_step(self, session: AgentSession, step: int, source: RelaySource, digest: bytes,
                           params: np.ndarray) -> None:
        """Take the parameters of a relayed STEP instead of the honest session."""
        await session.honest_relayed_step(step, source, digest, params)

    async def on_fetch(self, session: AgentSession, msg: Message) -> None:
        """Answer a FETCH instead of the honest session (``session.answer_fetch(msg)`` is the honest answer)."""
        await session.answer_fetch(msg)

    async def relay_request(self, store: RelayStore, conn: Connection, msg: Message, step: int,
                            digest: bytes, wait: float) -> bool:
        """Answer another agent's relay request for ``step`` instead of the relay server; True when handled."""
        return False

    async def relay_send(self, store: RelayStore, conn: Connection, msg: Message,
                         entry: RelayEntry) -> None:
        """Send ``entry``'s vector to another agent instead of the relay server's cut-through send."""
        raise NotImplementedError


@dataclass(frozen=True)
class BehaviourSpec:
    """One parsed ``--adversary`` value: the behaviour's class and its validated arguments (immutable, shared by
    every slot of the process; each session builds its own instances)."""

    behaviour: type[Behaviour]
    args: tuple[tuple[str, Any], ...]

    def build(self) -> Behaviour:
        return self.behaviour(**dict(self.args))

    def __str__(self) -> str:
        args = ",".join(str(v) for _, v in self.args)
        return f"{self.behaviour.name}:{args}" if args else self.behaviour.name


def check_composable(specs: tuple[BehaviourSpec, ...]) -> None:
    """AdversaryError when two behaviours claim the same takeover hook or the sketch source, or one is repeated."""
    names = [s.behaviour.name for s in specs]
    for name in set(names):
        if names.count(name) > 1:
            raise AdversaryError(f"{name} given twice")
    for hook in TAKEOVERS + ("sketches_input", "answers_sketch", "forges"):
        claiming = [s.behaviour.name for s in specs if _claims(s.behaviour, hook)]
        if len(claiming) > 1:
            raise AdversaryError(f"{' and '.join(claiming)} cannot be combined: both decide "
                                 f"{_HOOK_WORDS[hook]}")


def _claims(behaviour: type[Behaviour], hook: str) -> bool:
    if hook in TAKEOVERS:
        return behaviour.claims(hook)
    return getattr(behaviour, hook) != getattr(Behaviour, hook)


_HOOK_WORDS = {"on_step": "how STEP is handled", "relayed_step": "how relayed parameters are taken",
               "on_fetch": "how FETCH is answered", "relay_request": "how relay requests are answered",
               "relay_send": "what a relay sends", "sketches_input": "what is sketched",
               "answers_sketch": "whether SKETCH is answered", "forges": "what payload is sent"}


class Adversary:
    """The behaviours of one session (or of one process's relay server), composed; see the module docstring."""

    def __init__(self, specs: tuple[BehaviourSpec, ...] = ()) -> None:
        check_composable(specs)
        self.specs = specs
        self.behaviours = tuple(spec.build() for spec in specs)
        self._commits = tuple(b for b in self.behaviours if b.commits)
        stage = [i for i, b in enumerate(self._commits) if b.sketches_input]
        #: commits applied before the vector a sketch-liar sketches (None: sketch the committed vector)
        self.sketch_stage: int | None = stage[0] if stage else None
        self.commits = bool(self._commits)
        self.answers_sketch = all(b.answers_sketch for b in self.behaviours)
        self._forger = next((b for b in self.behaviours if b.forges), None)
        self.forges = self._forger is not None
        self._takers = {hook: next((b for b in self.behaviours if b.claims(hook)), None) for hook in TAKEOVERS}

    @property
    def honest(self) -> bool:
        return not self.behaviours

    def __repr__(self) -> str:
        return "Adversary(" + ", ".join(map(str, self.specs)) + ")"

    # ---- job -------------------------------------------------------------------------------------------------
    def probe(self, fields: dict[str, Any], gradient: np.ndarray, probe: dict[str, Any]) -> None:
        for behaviour in self.behaviours:
            behaviour.probe_fields(fields, gradient, probe)

    def probe_gradient(self, gradient: np.ndarray, step: int, file: int) -> None:
        for behaviour in self.behaviours:
            behaviour.probe_gradient(gradient, step, file)

    # ---- compute ---------------------------------------------------------------------------------------------
    def digest_delay(self, step: int, file: int) -> float:
        """Seconds to hold the digest of ``file`` (the longest any behaviour asks; 0 for an honest agent)."""
        return max((b.digest_delay(step, file) for b in self.behaviours), default=0.0)

    def commit(self, gradient: np.ndarray, step: int, file: int, worker: int, *,
               keep: dict[int, np.ndarray] | None = None, upto: int | None = None) -> np.ndarray:
        """Apply the commits in order, in place; with ``keep``, store a copy of the vector a sketch-liar sketches
        under ``keep[file]``; with ``upto``, stop before commit number ``upto`` (a regeneration of that vector)."""
        for i, behaviour in enumerate(self._commits):
            if upto is not None and i >= upto:
                break
            if keep is not None and i == self.sketch_stage:
                keep[file] = gradient.copy()
            behaviour.commit(gradient, step, file, worker)
        return gradient

    def forge(self, payload: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return self._forger.forge(payload, out) if self._forger is not None else payload

    # ---- takeovers -------------------------------------------------------------------------------------------
    def takes(self, hook: str) -> Behaviour | None:
        """The behaviour that claims takeover ``hook`` (one of :data:`TAKEOVERS`), or None."""
        return self._takers[hook]


#: The honest agent's adversary: no behaviour.
HONEST = Adversary()

