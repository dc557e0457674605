"""Evaluation of a flat parameter vector on the held-out split: top-1, top-5 and mean loss.

BatchNorm running statistics are not part of the parameter vector, and no worker's buffers are trusted or even seen:
before evaluating a network with BatchNorm, the Evaluator resets every BN layer's running statistics and re-estimates
them from a fixed set of training batches (train mode, no gradient, cumulative moving average, ``momentum=None``),
drawn deterministically from the job seed with the training augmentation. Whatever a plug-in model draws from the
process-wide generators (dropout in those training-mode passes) is seeded the same way (:mod:`shield_model.zoo.seeds`).
The result therefore depends only on the parameter vector, the data and the seed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from shield_model.compute import CALIBRATION_TAG, FORWARD_TAG, configure_torch, seeded_rng
from shield_model.errors import ComputeError
from shield_model.zoo.datasets import load_data
from shield_model.zoo.flat import FlatParameters
from shield_model.zoo.models import build_network, check_applicable
from shield_model.zoo.names import dataset_choice, network_choice
from shield_model.zoo.seeds import SeededForward

#: Tag of the evaluation-mode passes' seeded streams (a model that draws even in eval mode stays deterministic).
EVAL_TAG = 0x4556414C

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalResult:
    """Accuracy as fractions in [0, 1], mean cross-entropy, and the number of samples evaluated."""

    top1: float
    top5: float
    loss: float
    samples: int


class Evaluator:
    """Evaluates parameter vectors of one job on its dataset's held-out split. Not thread-safe."""

    def __init__(self, network: str, dataset: str, data_dir: str, seed: int, threads: int = 1,
                 batch_size: int = 500, bn_samples: int = 2000) -> None:
        if batch_size < 1 or threads < 1 or bn_samples < 0 or seed < 0:
            raise ComputeError("batch_size and threads must be >= 1, bn_samples and seed >= 0")
        net, data = network_choice(network), dataset_choice(dataset)
        check_applicable(net, data)
        self.seed, self.threads, self.batch_size = seed, threads, batch_size
        configure_torch(threads)
        self.data = load_data(data, data_dir)
        self.model = build_network(net, self.data.num_classes, self.data.channels, seed)
        self._train_forward, self._eval_forward = SeededForward(self.model), SeededForward(self.model)
        self.flat = FlatParameters(self.model)
        self.num_params = self.flat.num_params
        self.norms = [m for m in self.model.modules() if isinstance(m, _BatchNorm)]
        self.top_k = min(5, self.data.num_classes)
        self._calibration = self._calibration_batches(bn_samples) if self.norms else []

    def _calibration_batches(self, bn_samples: int) -> list[torch.Tensor]:
        """Fixed index batches of the training set used to re-estimate BN statistics (whole batches only)."""
        total = self.data.train_size
        size = min(self.batch_size, bn_samples, total)
        count = min(bn_samples, total) // size if size else 0
        order = torch.from_numpy(seeded_rng(self.seed, CALIBRATION_TAG).permutation(total))
        return [order[i * size:(i + 1) * size] for i in range(count)]

    @torch.no_grad()
    def recalibrate(self) -> None:
        """Re-estimate every BatchNorm layer's running mean/variance from the calibration batches (see module)."""
        for norm in self.norms:
            norm.reset_running_stats()
            norm.momentum = None
        self.model.train()
        for index, indices in enumerate(self._calibration):
            inputs, _ = self.data.train_batch(indices, self.seed, index, CALIBRATION_TAG)
            self._train_forward(inputs, self.seed, index, CALIBRATION_TAG, FORWARD_TAG)

    @torch.no_grad()
    def evaluate(self, params: np.ndarray) -> EvalResult:
        """Top-1/top-5 accuracy and mean cross-entropy of ``params`` on the held-out split."""
        configure_torch(self.threads)
        self.flat.load(params)
        if self.norms:
            self.recalibrate()
        self.model.eval()
        correct1 = correct5 = 0
        loss_sum = 0.0
        n = self.data.test_size
        for start in range(0, n, self.batch_size):
            inputs, y = self.data.test_batch(start, start + self.batch_size)
            logits = self._eval_forward(inputs, self.seed, start, EVAL_TAG)
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            hits = logits.topk(self.top_k, dim=1).indices == y[:, None]
            correct1 += int(hits[:, 0].sum())
            correct5 += int(hits.any(dim=1).sum())
        return EvalResult(correct1 / n, correct5 / n, loss_sum / n, n)


def has_batch_norm(model: nn.Module) -> bool:
    """Whether ``model`` has BatchNorm layers (whose statistics :class:`Evaluator` re-estimates)."""
    return any(isinstance(m, _BatchNorm) for m in model.modules())
