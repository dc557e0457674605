"""The model and dataset zoo: networks by CLI name, datasets loaded into memory, your own (``MODULE:CALLABLE``,
:mod:`.plugins`), and flat-parameter binding.

The names (:class:`Network`, :class:`Dataset`, the choices and their parsers) come from the torch-free :mod:`.names`;
everything else is resolved lazily, so ``from shield_agent.zoo import Network`` does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from shield_agent.zoo.names import Dataset, Network, dataset_choice, network_choice, parse_dataset, parse_network

_LAZY = {
    "DATASETS": "shield_agent.zoo.datasets", "BatchTransform": "shield_agent.zoo.datasets",
    "DatasetInfo": "shield_agent.zoo.datasets", "ImageData": "shield_agent.zoo.datasets",
    "load_dataset": "shield_agent.zoo.datasets", "NETWORKS": "shield_agent.zoo.models",
    "applicable": "shield_agent.zoo.models", "build_model": "shield_agent.zoo.models",
    "build_seeded_model": "shield_agent.zoo.models", "FlatParameters": "shield_agent.zoo.flat",
    "load_data": "shield_agent.zoo.datasets", "build_network": "shield_agent.zoo.models",
}

__all__ = ["Dataset", "Network", "dataset_choice", "network_choice", "parse_dataset", "parse_network", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
