"""Errors raised by the Byzantine math: one small hierarchy, each with a short machine-readable ``code``.

Every error raised here on purpose derives from :class:`ByzantineError`; errors about a choice the caller made
(placement, attack, tolerance, vote and aggregation inputs) also derive from ``ValueError``. The parameter server
catches these beside its own errors.
"""
from __future__ import annotations


class ByzantineError(Exception):
    """Base of every error the Byzantine math raises on purpose."""

    code = "byzantine"


class ByzantineConfigError(ByzantineError, ValueError):
    """A choice (placement, attack, tolerance) that cannot work; the message says what would."""

    code = "config"


class PlacementError(ByzantineConfigError):
    """A placement request (scheme, K, r, m) that is inconsistent."""

    code = "placement"


class AttackError(ByzantineConfigError):
    """An attack or Byzantine-set choice that cannot be simulated."""

    code = "attack"


class AnalysisError(ByzantineError):
    """The worst-case analysis could not run (e.g. the solver failed)."""

    code = "analysis"


class VoteError(ByzantineError, ValueError):
    """Malformed input to the majority vote."""

    code = "vote"


class AggregationError(ByzantineError, ValueError):
    """Bad aggregator name, parameters, shapes or dtypes."""

    code = "aggregation"
