"""Evaluation of flat parameter vectors: exact top-1/top-5/loss on constructed parameters, LeNet training to >= 95%
held-out accuracy on the local MNIST, and BatchNorm statistics that depend on no worker's buffers."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from shield_agent.compute import ComputeSpec, GradientComputer
from shield_agent.errors import ComputeError
from shield_agent.evaluation import EvalResult, Evaluator

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = os.environ.get("SHIELD_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist"))


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
