"""shield parameter server: placement, Byzantine-robust aggregation and the training daemon.

``shield_ps.aggregate(name, X, **params)`` and ``shield_ps.AGGREGATORS`` are the stable entry points of the robust
aggregators (see :mod:`byzantine.aggregators`). They load lazily, so importing ``shield_ps`` (e.g. for
``shield-ps --help``) costs nothing until they are used.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from byzantine.aggregators import AGGREGATORS, aggregate

__all__ = ["AGGREGATORS", "aggregate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from byzantine import aggregators

        return getattr(aggregators, name)
    raise AttributeError(f"module 'shield_ps' has no attribute {name!r}")
