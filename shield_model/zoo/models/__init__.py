"""The network registry: one table from :class:`Network` (values are the CLI names) to a constructor and the datasets
the network applies to. The number of classes and input channels always follow the dataset.

A plug-in network (``--network MODULE:CALLABLE``, :mod:`shield_model.zoo.plugins`) is one more kind of entry:
:func:`network_entry` gives the registry's entry for a built-in name and a plug-in entry for a plug-in, and every
builder below goes through it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from shield_model.errors import ModelError, PluginError
from shield_model.zoo.datasets import DATASETS
from shield_model.zoo.models.densenet import densenet121
from shield_model.zoo.models.lenet import LeNet
from shield_model.zoo.models.resnet import resnet18, resnet34, resnet50
from shield_model.zoo.models.vgg import vgg11, vgg13
from shield_model.zoo.names import (
    Dataset,
    Network,
    NetworkChoice,
    choice_name,
    dataset_choice,
    network_choice,
)
from shield_model.zoo.plugins import PluginSpec, describe_call_error, load_callable
from shield_model.zoo.seeds import RNG_LOCK


@dataclass(frozen=True)
class NetworkEntry:
    """How to build one network: ``build(num_classes, in_channels)`` and the datasets whose inputs it accepts."""

    build: Callable[[int, int], nn.Module]
    datasets: frozenset[Dataset] | None  # None: any dataset whose samples its forward pass accepts (a plug-in)


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


def network_entry(network: str | NetworkChoice) -> NetworkEntry:
    """The entry that builds ``network``: the registry's for a built-in name, a plug-in's for ``MODULE:CALLABLE``."""
    choice = network_choice(network)
    if isinstance(choice, PluginSpec):
        return NetworkEntry(lambda classes, channels: build_plugin_network(choice, classes), None)
    return NETWORKS[choice]


def build_plugin_network(spec: PluginSpec, num_classes: int) -> nn.Module:
    """``CALLABLE(num_classes)`` of a plug-in network, checked to be a ``torch.nn.Module`` with trainable
    floating-point parameters; :class:`PluginError` saying what is wrong otherwise."""
    build = load_callable(spec, "--network")
    try:
        model = build(num_classes)
    except Exception as exc:  # noqa: BLE001 (the user's code: reported in one line)
        raise describe_call_error(spec, "--network", f"{spec.name}({num_classes})", exc) from None
    if not isinstance(model, nn.Module):
        raise PluginError(f"--network {spec}: {spec.name}({num_classes}) returned a {type(model).__name__}, not a "
                          "torch.nn.Module")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise PluginError(f"--network {spec}: the model has no trainable parameters")
    odd = sorted({str(p.dtype) for p in trainable if not p.is_floating_point()})
    if odd:
        raise PluginError(f"--network {spec}: trainable parameters must be floating point, found {', '.join(odd)}")
    return model


def applicable(network: str | NetworkChoice, dataset: str | Dataset | PluginSpec) -> bool:
    """Whether ``network`` accepts ``dataset``'s inputs (a plug-in on either side: checked by a forward pass
    instead, :func:`shield_model.zoo.plugin_data.check_model`)."""
    datasets = network_entry(network).datasets
    data = dataset_choice(dataset)
    return datasets is None or isinstance(data, PluginSpec) or data in datasets


def check_applicable(network: str | NetworkChoice, dataset: str | Dataset | PluginSpec) -> None:
    """:class:`ModelError` naming the datasets ``network`` takes when it does not take ``dataset``."""
    if not applicable(network, dataset):
        entry, net = network_entry(network), network_choice(network)
        allowed = ", ".join(sorted(d.value for d in entry.datasets or ()))
        raise ModelError(f"network {choice_name(net)} does not apply to dataset "
                         f"{choice_name(dataset_choice(dataset))} (it takes: {allowed})")


def build_network(network: str | NetworkChoice, num_classes: int, channels: int, seed: int) -> nn.Module:
    """A freshly initialised ``network`` for ``num_classes`` classes and ``channels`` input channels, its weights
    drawn from torch's generator seeded by ``seed`` (and the generator restored after)."""
    entry = network_entry(network)
    with RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return entry.build(num_classes, channels)


def build_model(network: str | Network, dataset: str | Dataset) -> nn.Module:
    """A freshly initialised ``network`` sized for the built-in ``dataset`` (classes, channels), using torch's global
    RNG for the initial weights (seed it, or use :func:`build_seeded_model`). A plug-in dataset's size is known once
    it is loaded: build with :func:`build_network` then."""
    data = dataset_choice(dataset)
    if isinstance(data, PluginSpec):
        raise ModelError(f"dataset {data} is a plug-in: its classes and channels are known once it is loaded "
                         "(build_network)")
    check_applicable(network, data)
    info = DATASETS[data]
    return network_entry(network).build(info.num_classes, info.channels)


def build_seeded_model(network: str | Network, dataset: str | Dataset, seed: int) -> nn.Module:
    """:func:`build_model` with weights drawn from a private RNG seeded by ``seed`` (the global RNG is untouched)."""
    with RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(network, dataset)
