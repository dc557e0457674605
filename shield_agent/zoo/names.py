"""Network and dataset names as the CLIs spell them. Torch-free, so argument parsers can use them cheaply."""
from __future__ import annotations

import enum

from shield_agent.errors import DatasetError, ModelError


class Network(str, enum.Enum):
    """Networks by the names the CLI accepts."""

    LENET = "LeNet"
    LENET_RELU = "LeNet-relu"
    RESNET18 = "ResNet18"
    RESNET34 = "ResNet34"
    RESNET50 = "ResNet50"
    DENSENET = "DenseNet"
    VGG11 = "VGG11"
    VGG13 = "VGG13"


class Dataset(str, enum.Enum):
    """Datasets by the names the CLI accepts."""

    MNIST = "MNIST"
    CIFAR10 = "Cifar10"
    CIFAR100 = "Cifar100"
    SVHN = "SVHN"


def parse_network(name: str | Network) -> Network:
    """The :class:`Network` for a CLI name (case-insensitive); :class:`ModelError` naming the choices otherwise."""
    if isinstance(name, Network):
        return name
    for member in Network:
        if member.value.lower() == str(name).lower():
            return member
    raise ModelError(f"unknown network {name!r} (choose from {', '.join(m.value for m in Network)})")


def parse_dataset(name: str | Dataset) -> Dataset:
    """The :class:`Dataset` for a CLI name (case-insensitive); :class:`DatasetError` naming the choices otherwise."""
    if isinstance(name, Dataset):
        return name
    for member in Dataset:
        if member.value.lower() == str(name).lower():
            return member
    raise DatasetError(f"unknown dataset {name!r} (choose from {', '.join(m.value for m in Dataset)})")
