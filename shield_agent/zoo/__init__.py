"""The model and dataset zoo: networks by CLI name, datasets loaded into memory, and flat-parameter binding."""
from __future__ import annotations

from shield_agent.zoo.datasets import DATASETS, BatchTransform, Dataset, DatasetInfo, ImageData, load_dataset, \
    parse_dataset
from shield_agent.zoo.models import NETWORKS, Network, applicable, build_model, build_seeded_model, parse_network

__all__ = [
    "DATASETS", "BatchTransform", "Dataset", "DatasetInfo", "ImageData", "load_dataset", "parse_dataset",
    "NETWORKS", "Network", "applicable", "build_model", "build_seeded_model", "parse_network",
]
