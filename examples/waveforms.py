"""A worked plug-in (docs/your-model.md): a small 1-D convolutional network and a synthetic dataset of noisy waveforms.

Train it Byzantine-robustly on this machine, from the repository's root (the current directory is searched for
``examples.waveforms``; elsewhere install the module or put its folder on PYTHONPATH)::

    shield-ps serve --network examples.waveforms:WaveNet --dataset examples.waveforms:waveforms \\
        --local-agents 15 --max-steps 300

Each sample is 64 readings of one period-type signal: a sine, a square or a sawtooth wave at 3, 4 or 5 cycles per
window (9 classes), at a random phase and amplitude, under Gaussian noise. The set is generated from a fixed seed, so
every machine builds the same one without downloading anything (``data_dir`` is not read). Training samples are
shifted in time at random in ``__getitem__``, drawing from torch's global generator, and the network has BatchNorm
and dropout: shield seeds those draws per file, so every replica of a file computes the same gradient bit for bit.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

LENGTH = 64
CYCLES = (3, 4, 5)
SHAPES = ("sine", "square", "sawtooth")
NOISE = 0.6
TRAIN_SAMPLES, TEST_SAMPLES = 6000, 1500


class Waveforms(Dataset):
    """Noisy waveforms of one split; ``augment`` shifts each training sample in time at random."""

    classes = [f"{shape}-{cycles}" for shape in SHAPES for cycles in CYCLES]

    def __init__(self, signals: np.ndarray, labels: np.ndarray, augment: bool) -> None:
        self.signals = torch.from_numpy(signals).unsqueeze(1)  # (n, 1 channel, LENGTH)
        self.labels = labels.tolist()
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.signals[index]
        if self.augment:
            x = torch.roll(x, int(torch.randint(LENGTH, ())), dims=-1)
        return x, self.labels[index]


def _generate(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(len(Waveforms.classes), size=count)
    t = np.arange(LENGTH) / LENGTH
    phase = rng.uniform(0, 1, size=(count, 1))
    amplitude = rng.uniform(0.6, 1.4, size=(count, 1))
    cycles = np.array(CYCLES)[labels % len(CYCLES)][:, None]
    x = (cycles * t + phase) % 1.0
    shape = labels // len(CYCLES)
    waves = np.where(shape[:, None] == 0, np.sin(2 * math.pi * x),
                     np.where(shape[:, None] == 1, np.sign(np.sin(2 * math.pi * x)), 2 * x - 1))
    signals = amplitude * waves + NOISE * rng.standard_normal((count, LENGTH))
    return signals.astype(np.float32), labels.astype(np.int64)


def waveforms(data_dir: Path) -> tuple[Waveforms, Waveforms]:
    """The dataset CALLABLE: ``(train, test)`` from a fixed seed (``data_dir`` is not read)."""
    rng = np.random.default_rng(20_250_601)
    train = Waveforms(*_generate(TRAIN_SAMPLES, rng), augment=True)
    test = Waveforms(*_generate(TEST_SAMPLES, rng), augment=False)
    return train, test


class WaveNet(nn.Module):
    """The network CALLABLE: three convolutions with BatchNorm, global average pooling, dropout, one linear layer
    (~10k parameters)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv1d(inputs, outputs, 5, padding=2), nn.BatchNorm1d(outputs), nn.ReLU())

        self.features = nn.Sequential(block(1, 16), nn.MaxPool1d(2), block(16, 32), nn.MaxPool1d(2), block(32, 48))
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(48, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x).mean(dim=-1)))
