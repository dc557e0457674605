"""shield's model library, below the PS and the agent: networks and datasets (:mod:`.zoo`), per-file gradients
(:mod:`.compute`), evaluation, the synthetic model of benchmarks and the devices.

``build_model`` is resolved lazily so that importing :mod:`shield_model` does not import torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shield_model.zoo.models import build_model

__all__ = ["build_model"]


def __getattr__(name: str) -> Any:
    if name == "build_model":
        from shield_model.zoo.models import build_model

        return build_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
