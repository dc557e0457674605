"""Evaluation of flat parameter vectors: exact top-1/top-5/loss on constructed parameters, LeNet training to >= 95%
held-out accuracy on the local MNIST, and BatchNorm statistics that depend on no worker's buffers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shield_model.compute import ComputeSpec, GradientComputer
from shield_model.errors import ComputeError
from shield_model.evaluation import EvalResult, Evaluator
from tests.runtime_helpers import MNIST_DIR as MNIST_PATH

MNIST_DIR = str(MNIST_PATH)


@pytest.fixture(scope="module")
def lenet_evaluator() -> Evaluator:
    return Evaluator("LeNet", "MNIST", MNIST_DIR, seed=1, threads=1)


def test_constant_logits_give_exact_accuracy_and_loss(lenet_evaluator):
    """Zero weights and biases 9, 8, ..., 0 on the last layer: every image predicts class 0, top-5 is {0..4}."""
    params = np.zeros(lenet_evaluator.num_params, dtype=np.float32)
    bias = np.arange(9, -1, -1, dtype=np.float32)
    params[-10:] = bias
    labels = lenet_evaluator.data.test_labels.numpy()
    result = lenet_evaluator.evaluate(params)
    log_softmax = bias - np.log(np.exp(bias.astype(np.float64)).sum())
    assert result.samples == 2000 == len(labels)
    assert result.top1 == pytest.approx(np.mean(labels == 0))
    assert result.top5 == pytest.approx(np.mean(labels <= 4))
    assert result.loss == pytest.approx(-log_softmax[labels].mean(), rel=1e-5)


def test_malformed_vector_is_refused(lenet_evaluator):
    with pytest.raises(ComputeError):
        lenet_evaluator.evaluate(np.zeros(3, dtype=np.float32))


def test_lenet_plain_sgd_reaches_95_percent_held_out():
    computer = GradientComputer(ComputeSpec("LeNet", "MNIST", MNIST_DIR, seed=1, batch_size=64, num_files=2))
    evaluator = Evaluator("LeNet", "MNIST", MNIST_DIR, seed=1)
    params = computer.initial_parameters()
    before = evaluator.evaluate(params)
    step_grad = np.empty_like(params)
    file_grad = np.empty_like(params)
    for step in range(400):
        step_grad[:] = 0
        for file in range(2):
            step_grad += computer.file_gradient(params, step, file, out=file_grad).gradient
        params -= np.float32(0.1 / 2) * step_grad
    after = evaluator.evaluate(params)
    assert before.top1 < 0.3
    assert after.top1 >= 0.95, after
    assert after.loss < before.loss and math.isfinite(after.loss)
    assert isinstance(after, EvalResult) and after.top5 >= after.top1


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> str:
    """A tiny dataset in the real CIFAR-10 binary layout: 5 x 8 training and 8 test images."""
    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rows = rng.integers(0, 256, size=(8, 1 + 3 * 32 * 32), dtype=np.uint8)
        rows[:, 0] %= 10
        rows.tofile(folder / name)
    return str(folder.parent)


def resnet_evaluator(data_dir: str) -> Evaluator:
    return Evaluator("ResNet18", "Cifar10", data_dir, seed=2, threads=1, batch_size=4, bn_samples=8)


def test_batch_norm_statistics_come_from_the_data_not_from_buffers(tiny_cifar):
    evaluator = resnet_evaluator(tiny_cifar)
    params = np.random.default_rng(0).normal(0, 0.05, evaluator.num_params).astype(np.float32)
    first = evaluator.evaluate(params)
    for norm in evaluator.norms:  # what a worker's (or an attacker's) buffers could hold
        norm.running_mean.fill_(100.0)
        norm.running_var.fill_(1e-6)
        norm.momentum = 0.1
    assert evaluator.evaluate(params) == first
    assert resnet_evaluator(tiny_cifar).evaluate(params) == first
    assert first.samples == 8 and 0 <= first.top1 <= first.top5 <= 1 and math.isfinite(first.loss)


def test_recalibration_is_the_mean_over_the_calibration_batches(tiny_cifar):
    evaluator = resnet_evaluator(tiny_cifar)
    evaluator.flat.load(np.random.default_rng(1).normal(0, 0.05, evaluator.num_params).astype(np.float32))
    seen: list[torch.Tensor] = []
    hook = evaluator.model.bn1.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    try:
        evaluator.recalibrate()
    finally:
        hook.remove()
    assert len(seen) == 2 and int(evaluator.model.bn1.num_batches_tracked) == 2
    expected_mean = torch.cat(seen).mean(dim=(0, 2, 3))
    expected_var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in seen]).mean(dim=0)
    torch.testing.assert_close(evaluator.model.bn1.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(evaluator.model.bn1.running_var, expected_var, rtol=1e-4, atol=1e-5)
