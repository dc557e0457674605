"""The network zoo: every network builds for every dataset it applies to, has the expected parameter count, and runs
forward and backward; names and applicability are checked."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import shield_model
from shield_model.errors import DatasetError, ModelError
from shield_model.zoo import DATASETS, NETWORKS, Dataset, Network, applicable, build_model, build_seeded_model

# Parameter counts of the CIFAR-style reference implementations (ResNet18 with 10 classes: 11,173,962); MNIST has
# one input channel, so its first conv is smaller.
EXPECTED_PARAMS = {
    ("LeNet", "MNIST"): 431_080, ("LeNet-relu", "MNIST"): 431_080,
    ("ResNet18", "MNIST"): 11_172_810, ("ResNet18", "Cifar10"): 11_173_962,
    ("ResNet18", "Cifar100"): 11_220_132, ("ResNet18", "SVHN"): 11_173_962,
    ("ResNet34", "MNIST"): 21_280_970, ("ResNet34", "Cifar10"): 21_282_122,
    ("ResNet34", "Cifar100"): 21_328_292, ("ResNet34", "SVHN"): 21_282_122,
    ("ResNet50", "MNIST"): 23_519_690, ("ResNet50", "Cifar10"): 23_520_842,
    ("ResNet50", "Cifar100"): 23_705_252, ("ResNet50", "SVHN"): 23_520_842,
    ("DenseNet", "MNIST"): 6_955_146, ("DenseNet", "Cifar10"): 6_956_298,
    ("DenseNet", "Cifar100"): 7_048_548, ("DenseNet", "SVHN"): 6_956_298,
    ("VGG11", "Cifar10"): 9_231_114, ("VGG11", "Cifar100"): 9_277_284, ("VGG11", "SVHN"): 9_231_114,
    ("VGG13", "Cifar10"): 9_416_010, ("VGG13", "Cifar100"): 9_462_180, ("VGG13", "SVHN"): 9_416_010,
}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine more threads only oversubscribe."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_table_covers_exactly_the_applicable_pairs():
    pairs = {(n.value, d.value) for n in Network for d in Dataset if applicable(n, d)}
    assert pairs == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("network,dataset", sorted(EXPECTED_PARAMS))
def test_builds_counts_and_runs_forward_backward(network, dataset):
    torch.manual_seed(0)
    model = build_model(network, dataset)
    info = DATASETS[Dataset(dataset)]
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[(network, dataset)]
    x = torch.randn(2, info.channels, info.height, info.width)
    logits = model.train()(x)
    assert logits.shape == (2, info.num_classes)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("network,dataset", [("LeNet", "Cifar10"), ("VGG11", "MNIST"), ("VGG13", "MNIST")])
def test_rejects_a_dataset_the_network_does_not_apply_to(network, dataset):
    with pytest.raises(ModelError, match=f"{network} does not apply to dataset {dataset}"):
        build_model(network, dataset)


def test_unknown_names_list_the_choices():
    with pytest.raises(ModelError, match="ResNet18, ResNet34"):
        build_model("ResNet19", "Cifar10")
    with pytest.raises(DatasetError, match="Cifar100"):
        build_model("ResNet18", "Cifar1000")


def test_names_are_case_insensitive_and_registry_is_complete():
    assert type(build_model("lenet", "mnist")) is type(build_model(Network.LENET, Dataset.MNIST))
    assert set(NETWORKS) == set(Network)


def test_seeded_build_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_seeded_model("LeNet", "MNIST", seed=7)
    after = torch.rand(3)
    b = build_seeded_model("LeNet", "MNIST", seed=7)
    c = build_seeded_model("LeNet", "MNIST", seed=8)
    assert torch.equal(before, after)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=False):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


def test_package_exposes_build_model_without_importing_torch_eagerly():
    code = ("import sys, shield_model; assert 'torch' not in sys.modules, 'eager torch import'; "
            "m = shield_model.build_model('LeNet', 'MNIST'); print(type(m).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "LeNet"
    assert shield_model.build_model is build_model
