"""The model and dataset zoo: networks by CLI name, datasets loaded into memory, your own (``MODULE:CALLABLE``,
:mod:`.plugins`), and flat-parameter binding.

The names (:class:`Network`, :class:`Dataset`, the choices and their parsers) come from the torch-free :mod:`.names`;
everything else is resolved lazily, so ``from shield_model.zoo import Network`` does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from shield_model.zoo.names import Dataset, Network, dataset_choice, network_choice, parse_dataset, parse_network

_LAZY = {
    "DATASETS": "shield_model.zoo.datasets", "BatchTransform": "shield_model.zoo.datasets",
    "DatasetInfo": "shield_model.zoo.datasets", "ImageData": "shield_model.zoo.datasets",
    "load_dataset": "shield_model.zoo.datasets", "NETWORKS": "shield_model.zoo.models",
    "applicable": "shield_model.zoo.models", "build_model": "shield_model.zoo.models",
    "build_seeded_model": "shield_model.zoo.models", "FlatParameters": "shield_model.zoo.flat",
    "load_data": "shield_model.zoo.datasets", "build_network": "shield_model.zoo.models",
}

__all__ = ["Dataset", "Network", "dataset_choice", "network_choice", "parse_dataset", "parse_network", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
