"""Errors raised by the parameter server.

One small hierarchy: every error the PS raises on purpose derives from :class:`ShieldPSError` and carries a short
machine-readable ``code``. Errors about user input also derive from ``ValueError`` so generic callers can catch them.
The Byzantine math below the PS has its own (:mod:`byzantine.errors`); :data:`PS_ERRORS` and :data:`CONFIG_ERRORS`
name both, for the places that catch whatever the PS or its math raise on purpose.
"""
from __future__ import annotations

from byzantine.errors import ByzantineConfigError, ByzantineError


class ShieldPSError(Exception):
    """Base of every error the PS raises on purpose."""

    code = "ps"


class ConfigError(ShieldPSError, ValueError):
    """A configuration (CLI flags, job spec) that cannot work; the message says what would."""

    code = "config"







class CheckpointError(ShieldPSError):
    """A checkpoint that is missing, corrupt, or belongs to another configuration."""

    code = "checkpoint"


class TrainingError(ShieldPSError):
    """The run cannot go on (e.g. too few files survived a step)."""

    code = "training"


class ViewError(ShieldPSError):
    """A run's metrics cannot be read for viewing or plotting."""

    code = "view"


class PlotError(ViewError):
    """A plot cannot be made (matplotlib missing, no data in the runs)."""

    code = "plot"


class SweepError(ConfigError):
    """A sweep grid (TOML file, flags or preset) that cannot run; the message names what is allowed."""

    code = "sweep"


#: What the PS and its Byzantine math raise on purpose (the CLI reports these as a message, exit 2).
PS_ERRORS = (ShieldPSError, ByzantineError)
#: A configuration that cannot work, whether the PS or its Byzantine math (placement, attack, tolerance) says so.
CONFIG_ERRORS = (ConfigError, ByzantineConfigError)
