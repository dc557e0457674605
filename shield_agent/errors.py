"""Errors raised by the worker agent: one small hierarchy, each with a short ``code``."""
from __future__ import annotations


class ShieldAgentError(Exception):
    """Base of every error the agent raises on purpose."""

    code = "agent"


class DatasetError(ShieldAgentError):
    """A dataset that is unknown, missing offline, or fails verification; the message says where files should go."""

    code = "dataset"


class ModelError(ShieldAgentError, ValueError):
    """An unknown network or a network that does not apply to the dataset."""

    code = "model"


class PluginError(ShieldAgentError, ValueError):
    """A ``--network``/``--dataset MODULE:CALLABLE`` that cannot be imported, called or used (docs/your-model.md)."""

    code = "plugin"


class PluginRefused(ShieldAgentError):
    """The PS's job names a plug-in this agent may not import or whose copy here differs from the PS's: joining again
    cannot help (code ``job``: the PS's close code for another model, a final refusal)."""

    code = "job"


class ComputeError(ShieldAgentError):
    """A job spec the compute core cannot honour (e.g. batch size not a multiple of the file count)."""

    code = "compute"


class JoinRefused(ShieldAgentError):
    """The PS refused our token again and again: retrying cannot help."""

    code = "auth"
