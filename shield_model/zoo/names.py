"""Network and dataset names as the CLIs spell them. Torch-free, so argument parsers can use them cheaply.

A ``--network``/``--dataset`` value is a *choice*: a built-in (a member of :class:`Network`/:class:`Dataset`, the
keys of the registries) or a plug-in's ``MODULE:CALLABLE`` (:class:`~shield_model.zoo.plugins.PluginSpec`).
"""
from __future__ import annotations

import enum

from shield_model.errors import DatasetError, ModelError
from shield_model.zoo.plugins import PluginSpec, is_plugin, parse_plugin


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


NetworkChoice = Network | PluginSpec
DatasetChoice = Dataset | PluginSpec


def network_choice(value: str | Network | PluginSpec) -> NetworkChoice:
    """A ``--network`` value: a built-in :class:`Network` (case-insensitive) or a plug-in ``MODULE:CALLABLE``;
    :class:`ModelError` (or :class:`~shield_model.errors.PluginError`) naming what is allowed otherwise."""
    if isinstance(value, (Network, PluginSpec)):
        return value
    if is_plugin(value):
        return parse_plugin(value, "--network")
    try:
        return parse_network(value)
    except ModelError as exc:
        raise ModelError(f"{exc}, or MODULE:CALLABLE for your own (docs/your-model.md)") from None


def dataset_choice(value: str | Dataset | PluginSpec) -> DatasetChoice:
    """A ``--dataset`` value: a built-in :class:`Dataset` (case-insensitive) or a plug-in ``MODULE:CALLABLE``."""
    if isinstance(value, (Dataset, PluginSpec)):
        return value
    if is_plugin(value):
        return parse_plugin(value, "--dataset")
    try:
        return parse_dataset(value)
    except DatasetError as exc:
        raise DatasetError(f"{exc}, or MODULE:CALLABLE for your own (docs/your-model.md)") from None


def choice_name(choice: NetworkChoice | DatasetChoice) -> str:
    """How a choice is spelled on the command line."""
    return choice.text if isinstance(choice, PluginSpec) else choice.value
