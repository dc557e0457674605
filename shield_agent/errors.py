"""Errors raised by the worker agent: one small hierarchy, each with a short ``code``. What the model library below
it raises (datasets, networks, plug-ins, compute) is :mod:`shield_model.errors`; the agent catches both
(:data:`AGENT_ERRORS`)."""
from __future__ import annotations

from shield_model.errors import ShieldModelError


class ShieldAgentError(Exception):
    """Base of every error the agent raises on purpose."""

    code = "agent"


class PluginRefused(ShieldAgentError):
    """The PS's job names a plug-in this agent may not import or whose copy here differs from the PS's: joining again
    cannot help (code ``job``: the PS's close code for another model, a final refusal)."""

    code = "job"


class JoinRefused(ShieldAgentError):
    """The PS refused our token again and again: retrying cannot help."""

    code = "auth"


#: What the agent and its model library raise on purpose (reported as a message and a close code, never a trace).
AGENT_ERRORS = (ShieldAgentError, ShieldModelError)
