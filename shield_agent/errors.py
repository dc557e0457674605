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


class ComputeError(ShieldAgentError):
    """A job spec the compute core cannot honour (e.g. batch size not a multiple of the file count)."""

    code = "compute"


class JoinRefused(ShieldAgentError):
    """The PS refused our token again and again: retrying cannot help."""

    code = "auth"
