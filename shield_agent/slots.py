"""An agent process: its worker slots, each joining the PS and reconnecting as allowed, and what they share.

``run_agent`` runs ``--workers N`` slots, each an :class:`~shield_agent.client.AgentSession` over its own
authenticated connection, with one compute pool (:mod:`shield_agent.host`) and one relay hub
(:mod:`shield_agent.relay`) for all. A dropped connection is retried with exponential backoff unless the agent was
started with ``reconnect=False`` (local agents, which must die with their PS). A PS that refuses our token
``max_refusals`` times in a row ends the agent with :class:`~shield_agent.errors.JoinRefused` (exit status 2); a run
the PS ends with any reason but ``completed`` gives exit status 1.
"""
from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING

from shield_agent.adversary import Adversary
from shield_agent.client import AgentSession
from shield_agent.errors import AGENT_ERRORS, JoinRefused, ShieldAgentError
from shield_agent.host import ComputeHost
from shield_agent.job import AgentOptions
from shield_agent.relay import RelayHub
from wire import AuthError, ConnectionClosed, Kind, WireError, connect
from wire.messages import Leave

if TYPE_CHECKING:
    from shield_agent.spot import SpotWatcher

log = logging.getLogger(__name__)


async def run_agent(options: AgentOptions, session_type: type[AgentSession] = AgentSession) -> int:
    """Run ``options.workers`` worker slots until the PS ends the run; the exit status is the worst slot's: 0 the run
    completed, 1 it failed or the PS was lost, 2 a slot hit an error of its own. Raises :class:`JoinRefused` when
    the PS refused our token ``options.max_refusals`` times in a row. ``session_type`` is the per-connection
    behaviour (tests substitute Byzantine ones)."""
    if options.synthetic is None:
        import shield_model.compute  # noqa: F401  (torch imports take seconds: never on a live connection's loop)

    host = ComputeHost(options.workers, options.compute_threads)
    hub = await _start_relay(options)
    watcher = _start_spot_watcher(options)
    refusals = _Refusals(options.max_refusals)
    errors = _SlotErrors()
    over = _RunOver()
    try:
        codes = await asyncio.gather(*(_run_slot(options, slot, host, hub, watcher, refusals, errors, session_type,
                                                 over) for slot in range(options.workers)))
    finally:
        await hub.close()
        await asyncio.get_running_loop().run_in_executor(None, host.shutdown)
    if refusals.error is not None:
        raise refusals.error
    return max(codes)


class _Refusals:
    """Consecutive refusals of our token, counted over all slots (they share the token): the first slot to reach
    the limit sets :attr:`error` and the others stop too."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0
        self.error: JoinRefused | None = None

    def refused(self, address: str, exc: Exception, retry: bool) -> bool:
        """Count one refusal; True when the agent must stop (at the limit, or at once when it may not retry)."""
        self.count += 1
        if (self.count >= self.limit or not retry) and self.error is None:
            times = "once" if self.count == 1 else f"{self.count} times in a row"
            self.error = JoinRefused(f"{address} refused our authentication {times} ({exc}); check --token or "
                                     "--token-file against the PS's token")
        return self.error is not None


class _RunOver:
    """Set by the first slot the PS tells that the run ended (completed, interrupted, failed): the process's other
    slots stop too, even one whose connection the PS's shutdown closed before it could say so (it would otherwise
    reconnect to a PS that is gone, with backoff, for ever)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.code = 0

    def end(self, code: int) -> None:
        if not self.event.is_set():
            self.code = code
            self.event.set()

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the run ends meanwhile."""
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except asyncio.TimeoutError:
            pass


class _SlotErrors:
    """Errors of our own that ended slots, each distinct message logged once: N slots that cannot find the dataset
    make one line saying what to pass, not N."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def report(self, exc: Exception) -> None:
        message = str(exc)
        if message not in self.seen:
            self.seen.add(message)
            log.error("%s", message)


async def _start_relay(options: AgentOptions) -> RelayHub:
    """The process's relay hub; its server listens unless ``options.relay`` is off (docs/performance.md)."""
    loopback = options.host in ("127.0.0.1", "localhost", "::1")
    hub = RelayHub(options.token, bind=options.relay_bind or ("127.0.0.1" if loopback else "0.0.0.0"),
                   port=options.relay_port, adversary=Adversary(options.adversary))
    if options.relay:
        try:
            await hub.start()
        except OSError as exc:
            raise ShieldAgentError(f"cannot serve relays on {options.relay_bind}:{options.relay_port}: {exc} "
                                   "(choose another --relay-port, or --no-relay)") from None
    return hub


async def _run_slot(options: AgentOptions, slot: int, host: ComputeHost, hub: RelayHub,
                    watcher: SpotWatcher | None,
                    refusals: _Refusals, errors: _SlotErrors,
                    session_type: type[AgentSession], over: _RunOver) -> int:
    """One worker slot: join, serve until LEAVE, reconnect with backoff when allowed (until another slot of the
    process hears that the run ended)."""
    address = f"{options.host}:{options.port}"
    backoff = 0.5
    while refusals.error is None:
        if over.event.is_set():
            return over.code
        try:
            conn = await connect(options.host, options.port, token=options.token, role="agent",
                                 name=options.slot_name(slot))
        except (OSError, WireError, asyncio.TimeoutError) as exc:
            token_refused = isinstance(exc, AuthError) and "token" in str(exc)
            if token_refused and refusals.refused(address, exc, options.reconnect):
                return 2
            if not options.reconnect:
                log.error("cannot join %s: %s", address, exc)
                return 1
            log.warning("cannot join %s (%s); retrying in %.1fs", address, exc, backoff)
            await over.sleep(backoff * (1 + random.random() / 4))
            backoff = min(backoff * 2, options.max_backoff)
            continue
        refusals.count, backoff = 0, 0.5
        log.debug("slot %d joined %s as peer %d", slot, address, conn.known_peer.id)
        session = session_type(options, conn, host, hub)
        leaver = asyncio.get_running_loop().create_task(_leave_on_notice(watcher, session)) if watcher else None
        try:
            await session.run()
        except AGENT_ERRORS as exc:
            errors.report(exc)
            await conn.close(str(exc), code=exc.code)
            return 2
        except ConnectionClosed as exc:  # closed under a read (the PS cut a STEP at its deadline): lost, not fatal
            log.info("worker %d: the connection closed during a read: %s", conn.known_peer.id, exc)
        finally:
            if leaver is not None:
                leaver.cancel()
                await asyncio.gather(leaver, return_exceptions=True)
            await conn.close("agent leaving")
        if session.finished or (watcher is not None and watcher.event.is_set()):
            code = _ended(session, conn.known_peer.id)
            if session.end_reason is not None:
                over.end(code)
            return code
        refused = getattr(conn.close_error, "remote_code", None)
        if refused in FINAL_REFUSALS:
            log.error("the PS refused this agent: %s", getattr(conn.close_error, "reason", conn.close_error))
            return 2
        if not options.reconnect:
            log.warning("worker %d lost the PS (%s); not reconnecting", conn.known_peer.id, conn.close_error)
            return 1
        log.warning("worker %d lost the PS (%s); reconnecting", conn.known_peer.id, conn.close_error)
    return 2


#: Close codes after which joining again would only be refused again: another determinism class under --vote exact,
#: a probe the PS proved false, another model (the agent must be fixed, not retried).
FINAL_REFUSALS = frozenset({"class", "fingerprint", "job"})


def _ended(session: AgentSession, worker: int) -> int:
    """Log how the run ended for this slot; 0 when the PS said it completed."""
    reason = session.end_reason or "left"
    if reason == "completed" or session.end_reason is None:
        log.info("worker %d: the run ended: %s", worker, reason)
        return 0
    log.warning("worker %d: the run ended: %s", worker, reason)
    return 1


def _start_spot_watcher(options: AgentOptions) -> SpotWatcher | None:
    if not options.spot_watch:
        return None
    from shield_agent.spot import SpotWatcher, endpoint_from_env

    host, port = options.imds or endpoint_from_env()
    watcher = SpotWatcher(host, port, marker=options.spot_notice_file)
    task = asyncio.get_running_loop().create_task(watcher.run())
    task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
    return watcher


async def _leave_on_notice(watcher: SpotWatcher, session: AgentSession) -> None:
    """On a spot interruption notice, tell the PS we are leaving (it erases us at once) and end the session."""
    await watcher.event.wait()
    log.warning("spot interruption notice (%s): leaving the PS", watcher.notice)
    try:
        await session.conn.send(Kind.LEAVE, Leave("spot interruption").header())
    finally:
        session.finished = True
        await session.conn.close("spot interruption")
