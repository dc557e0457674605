"""Errors raised by the parameter server and its Byzantine math.

One small hierarchy: every error the PS raises on purpose derives from :class:`ShieldPSError` and carries a short
machine-readable ``code``. Errors about user input also derive from ``ValueError`` so generic callers can catch them.
"""
from __future__ import annotations


class ShieldPSError(Exception):
    """Base of every error the PS raises on purpose."""

    code = "ps"


class ConfigError(ShieldPSError, ValueError):
    """A configuration (CLI flags, job spec) that cannot work; the message says what would."""

    code = "config"


class PlacementError(ConfigError):
    """A placement request (scheme, K, r, m) that is inconsistent."""

    code = "placement"


class AnalysisError(ShieldPSError):
    """The worst-case analysis could not run (e.g. the solver failed)."""

    code = "analysis"


class VoteError(ShieldPSError, ValueError):
    """Malformed input to the majority vote."""

    code = "vote"


class AggregationError(ShieldPSError, ValueError):
    """Bad aggregator name, parameters, shapes or dtypes."""

    code = "aggregation"


class AttackError(ConfigError):
    """An attack or Byzantine-set choice that cannot be simulated."""

    code = "attack"


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
