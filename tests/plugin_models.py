"""Plug-in networks and datasets for the tests of ``--network``/``--dataset MODULE:CALLABLE`` (tests/test_plugins*.py):
small good ones (with BatchNorm, dropout and a random augmentation) and ones that break each rule of the contract."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

FEATURES, CLASSES = 12, 4


class Blobs(torch.utils.data.Dataset):
    """Four Gaussian blobs in 12 dimensions; ``jitter`` adds noise from torch's global generator in ``__getitem__``."""

    def __init__(self, count: int, seed: int, jitter: float = 0.0) -> None:
        rng = np.random.default_rng(seed)
        centres = np.random.default_rng(7).normal(0, 1.5, size=(CLASSES, FEATURES))
        self.labels = rng.integers(CLASSES, size=count)
        self.points = torch.from_numpy((centres[self.labels] + rng.normal(0, 1, (count, FEATURES))).astype(np.float32))
        self.jitter = jitter

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = self.points[index]
        if self.jitter:
            x = x + self.jitter * torch.randn(FEATURES)
        return x, int(self.labels[index])


def blobs(data_dir):
    return Blobs(600, 1, jitter=0.3), Blobs(200, 2)


class Mlp(nn.Module):
    """Linear - ReLU - dropout - linear - BatchNorm - ReLU - linear (the BatchNorm statistics depend on dropout)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32),
                                  nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.body(x)


class NoisyMlp(Mlp):
    """Not repeatable: its logits carry float32-rounding-sized noise from the operating system's entropy, as a model
    whose kernels sum in a varying order would."""

    def forward(self, x):
        logits = super().forward(x)
        noise = torch.randn(logits.shape, generator=torch.Generator().manual_seed(int.from_bytes(os.urandom(7), "big")))
        return logits * (1 + 1e-7 * noise)


def not_a_module(num_classes: int):
    return [nn.Linear(FEATURES, num_classes)]


def wrong_logits(num_classes: int) -> nn.Module:
    return nn.Linear(FEATURES, num_classes + 1)


def one_split(data_dir):
    return Blobs(10, 1)


def uneven_shapes(data_dir):
    class Uneven(Blobs):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return (x if index % 2 == 0 else x[:-1]), y

    return Uneven(20, 1), Blobs(10, 2)


def float_labels(data_dir):
    class Floats(Blobs):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return x, float(y)

    return Floats(20, 1), Blobs(10, 2)


def arrays(data_dir):
    class Arrays(Blobs):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return x.numpy(), y

    return Arrays(20, 1), Blobs(10, 2)


def raises(data_dir):
    raise FileNotFoundError(f"no blobs in {data_dir}")


NOT_CALLABLE = 3


class Unpooling(nn.Module):
    """Uses max_unpool1d, which has no deterministic kernel on a CPU: torch refuses it under deterministic algorithms
    unless they only warn."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.hidden, self.out = nn.Linear(FEATURES, FEATURES), nn.Linear(FEATURES, num_classes)

    def forward(self, x):
        pooled, where = nn.functional.max_pool1d(self.hidden(x).unsqueeze(1), 2, return_indices=True)
        return self.out(nn.functional.max_unpool1d(pooled, where, 2).squeeze(1))
