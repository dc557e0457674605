"""The networks against the original ByzShield code's definitions (``src/model_ops/``), layer by layer.

Expected values are read off the original's definitions by hand (layer order, shapes, counts, initialisation), never
computed by the project's own modules. The comparison itself is written up in docs/compute.md.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from shield_model.zoo import build_model, build_seeded_model


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _original_lenet_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The original's ``LeNet.forward``: conv1, max-pool 2, relu, conv2, max-pool 2, relu, view, fc1, fc2."""
    x = F.relu(F.max_pool2d(F.conv2d(x, state["conv1.weight"], state["conv1.bias"]), 2, 2))
    x = F.relu(F.max_pool2d(F.conv2d(x, state["conv2.weight"], state["conv2.bias"]), 2, 2))
    x = F.linear(x.view(-1, 4 * 4 * 50), state["fc1.weight"], state["fc1.bias"])
    return F.linear(x, state["fc2.weight"], state["fc2.bias"])


def test_lenet_is_the_originals_without_a_relu_after_fc1() -> None:
    model = build_seeded_model("LeNet", "MNIST", seed=3).eval()
    state = {name: p.detach() for name, p in model.named_parameters()}
    assert [tuple(p.shape) for p in state.values()] == [
        (20, 1, 5, 5), (20,), (50, 20, 5, 5), (50,), (500, 800), (500,), (10, 500), (10,)]
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), _original_lenet_forward(state, x))


def test_lenet_relu_is_the_documented_variant() -> None:
    plain = build_seeded_model("LeNet", "MNIST", seed=3).eval()
    relu = build_seeded_model("LeNet-relu", "MNIST", seed=3).eval()
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), relu.parameters(), strict=False))   # same weights
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = plain.fc1(torch.flatten(F.relu(F.max_pool2d(plain.conv2(
            F.relu(F.max_pool2d(plain.conv1(x), 2))), 2)), 1))
        assert torch.allclose(relu(x), plain.fc2(F.relu(hidden)))
        assert not torch.allclose(relu(x), plain(x))


# Parameter tensors in registration order, counted from the original's definitions: ResNet18 = stem (conv + bn = 3)
# + 8 basic blocks * 6 + 3 projection shortcuts * 3 + linear 2; ResNet34 = 3 + 16 * 6 + 3 * 3 + 2; ResNet50 = 3 +
# 16 bottlenecks * 9 + 4 shortcuts * 3 (layer1 widens 64 -> 256) + 2; DenseNet121 = conv1 1 + 58 bottlenecks * 6 +
# 3 transitions * 3 + bn 2 + linear 2; vgg11_bn = 8 * (conv w, b, bn w, b) + 2; vgg13_bn = 10 * 4 + 2.
TENSORS = {"ResNet18": 62, "ResNet34": 110, "ResNet50": 161, "DenseNet": 362, "VGG11": 34, "VGG13": 42}


@pytest.mark.parametrize("network", sorted(TENSORS))
def test_layer_layout_matches_the_original(network: str) -> None:
    model = build_model(network, "Cifar10")
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert len(shapes) == TENSORS[network]
    assert shapes[-2:] == [(10, {"ResNet50": 2048, "DenseNet": 1024}.get(network, 512)), (10,)]
    if network.startswith("ResNet"):
        assert shapes[:3] == [(64, 3, 3, 3), (64,), (64,)]          # 3x3 stem, no bias, BN; no max-pool
    if network == "ResNet18":
        assert shapes[3:9] == [(64, 64, 3, 3), (64,), (64,), (64, 64, 3, 3), (64,), (64,)]
        assert (128, 64, 1, 1) in shapes                            # layer2's projection shortcut
    if network == "DenseNet":
        assert shapes[:4] == [(64, 3, 3, 3), (64,), (64,), (128, 64, 1, 1)]   # 2k stem, BN, 4k bottleneck
        assert (512, 1024, 1, 1) in shapes and (256, 512, 1, 1) in shapes     # transitions halve 1024 and 512
    if network.startswith("VGG"):
        assert shapes[:4] == [(64, 3, 3, 3), (64,), (64,), (64,)]   # conv with bias, then BN


@pytest.mark.parametrize("network", ["VGG11", "VGG13"])
def test_vgg_initialisation_is_the_originals(network: str) -> None:
    model = build_seeded_model(network, "Cifar10", seed=1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        assert torch.count_nonzero(conv.bias) == 0
        expected = math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels))
        assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert abs(conv.weight.mean().item()) < 0.2 * expected
    head = model.classifier
    assert torch.count_nonzero(head.bias) == 0
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.1)
