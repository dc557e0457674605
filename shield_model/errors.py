"""Errors raised by the model library (networks, datasets, plug-ins, gradient compute): one small hierarchy, each
with a short ``code``. The agent and the PS both catch :class:`ShieldModelError` beside their own."""
from __future__ import annotations


class ShieldModelError(Exception):
    """Base of every error the model library raises on purpose."""

    code = "model"


class DatasetError(ShieldModelError):
    """A dataset that is unknown, missing offline, or fails verification; the message says where files should go."""

    code = "dataset"


class ModelError(ShieldModelError, ValueError):
    """An unknown network or a network that does not apply to the dataset."""

    code = "model"


class PluginError(ShieldModelError, ValueError):
    """A ``--network``/``--dataset MODULE:CALLABLE`` that cannot be imported, called or used (docs/your-model.md)."""

    code = "plugin"


class ComputeError(ShieldModelError):
    """A job spec the compute core cannot honour (e.g. batch size not a multiple of the file count)."""

    code = "compute"
