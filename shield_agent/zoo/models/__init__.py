"""The network registry: one table from :class:`Network` (values are the CLI names) to a constructor and the datasets
the network applies to. The number of classes and input channels always follow the dataset."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from shield_agent.errors import ModelError
from shield_agent.zoo.datasets import DATASETS
from shield_agent.zoo.models.densenet import densenet121
from shield_agent.zoo.models.lenet import LeNet
from shield_agent.zoo.models.resnet import resnet18, resnet34, resnet50
from shield_agent.zoo.models.vgg import vgg11, vgg13
from shield_agent.zoo.names import Dataset, Network, parse_dataset, parse_network


@dataclass(frozen=True)
class NetworkEntry:
    """How to build one network: ``build(num_classes, in_channels)`` and the datasets whose inputs it accepts."""

    build: Callable[[int, int], nn.Module]
    datasets: frozenset[Dataset]


_ALL = frozenset(Dataset)
_RGB32 = frozenset({Dataset.CIFAR10, Dataset.CIFAR100, Dataset.SVHN})

#: Network -> constructor and applicable datasets. ResNets and DenseNet pool adaptively, so they also take MNIST's
#: 28x28 inputs; VGG's five max-pools need 32x32; LeNet's fc1 is sized for 28x28.
NETWORKS: dict[Network, NetworkEntry] = {
    Network.LENET: NetworkEntry(lambda classes, channels: LeNet(classes, channels), frozenset({Dataset.MNIST})),
    Network.LENET_RELU: NetworkEntry(lambda classes, channels: LeNet(classes, channels, relu_fc1=True),
                                     frozenset({Dataset.MNIST})),
    Network.RESNET18: NetworkEntry(resnet18, _ALL),
    Network.RESNET34: NetworkEntry(resnet34, _ALL),
    Network.RESNET50: NetworkEntry(resnet50, _ALL),
    Network.DENSENET: NetworkEntry(densenet121, _ALL),
    Network.VGG11: NetworkEntry(vgg11, _RGB32),
    Network.VGG13: NetworkEntry(vgg13, _RGB32),
}


def applicable(network: str | Network, dataset: str | Dataset) -> bool:
    """Whether ``network`` accepts ``dataset``'s inputs."""
    return parse_dataset(dataset) in NETWORKS[parse_network(network)].datasets


def build_model(network: str | Network, dataset: str | Dataset) -> nn.Module:
    """A freshly initialised ``network`` sized for ``dataset`` (classes, channels), using torch's global RNG for
    the initial weights (seed it, or use :func:`build_seeded_model`)."""
    net, data = parse_network(network), parse_dataset(dataset)
    entry = NETWORKS[net]
    if data not in entry.datasets:
        allowed = ", ".join(sorted(d.value for d in entry.datasets))
        raise ModelError(f"network {net.value} does not apply to dataset {data.value} (it takes: {allowed})")
    info = DATASETS[data]
    return entry.build(info.num_classes, info.channels)


def build_seeded_model(network: str | Network, dataset: str | Dataset, seed: int) -> nn.Module:
    """:func:`build_model` with weights drawn from a private RNG seeded by ``seed`` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(network, dataset)
