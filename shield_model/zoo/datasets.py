"""Datasets: shapes, the paper's normalisation and augmentation, and in-memory loading.

Images are kept as uint8 tensors (N, C, H, W); :class:`BatchTransform` turns a gathered batch into normalised float32
input, augmenting (reflect-pad 4, random 32x32 crop, horizontal flip) from an explicit numpy RNG so that a file's
input is a pure function of the RNG's seed.

The compute core reads any dataset through one small interface, :class:`TrainingData`: :class:`ImageData` (a built-in
dataset) and :class:`~shield_model.zoo.plugin_data.PluginData` (``--dataset MODULE:CALLABLE``) implement it, and
:func:`load_data` loads either.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch.nn import functional as F

from shield_model.errors import DatasetError
from shield_model.zoo import readers
from shield_model.zoo.mnist_idx import load_mnist_arrays
from shield_model.zoo.names import Dataset, DatasetChoice, dataset_choice, parse_dataset
from shield_model.zoo.plugins import PluginSpec
from shield_model.zoo.seeds import seeded_rng

if TYPE_CHECKING:
    from shield_model.zoo.plugin_data import PluginData


@dataclass(frozen=True)
class DatasetInfo:
    """Shape and preprocessing of one dataset. ``mean``/``std`` are per channel on the [0, 1] scale; ``augment``
    turns on reflect-pad 4 + random crop + horizontal flip for training batches."""

    num_classes: int
    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    load: Callable[[Path], readers.Arrays]


#: Normalisation as in the ByzShield experiments.
DATASETS: dict[Dataset, DatasetInfo] = {
    Dataset.MNIST: DatasetInfo(10, 1, 28, 28, (0.1307,), (0.3081,), False, load_mnist_arrays),
    Dataset.CIFAR10: DatasetInfo(10, 3, 32, 32, (125.3 / 255, 123.0 / 255, 113.9 / 255),
                                 (63.0 / 255, 62.1 / 255, 66.7 / 255), True, readers.load_cifar10),
    Dataset.CIFAR100: DatasetInfo(100, 3, 32, 32, (125.3 / 255, 123.0 / 255, 113.9 / 255),
                                  (63.0 / 255, 62.1 / 255, 66.7 / 255), True, readers.load_cifar100),
    Dataset.SVHN: DatasetInfo(10, 3, 32, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), True,
                              readers.load_svhn),
}


class TrainingData(Protocol):
    """A dataset as the compute core and the evaluator read it."""

    name: str  # as on the command line
    num_classes: int
    channels: int  # the first axis of a sample (what a built-in network's first layer takes)
    train_size: int
    test_size: int

    def train_batch(self, indices: torch.Tensor, *words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 inputs and int64 labels of training samples ``indices``, augmented (where the dataset augments)
        from random streams that are a pure function of ``words``."""

    def test_batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 inputs and int64 labels of held-out samples ``start:stop`` (never augmented)."""


@dataclass(frozen=True)
class ImageData:
    """A dataset in memory: uint8 images (N, C, H, W) and int64 labels for both splits."""

    dataset: Dataset
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.dataset]

    @property
    def name(self) -> str:
        return self.dataset.value

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def channels(self) -> int:
        return self.info.channels

    @property
    def train_size(self) -> int:
        return len(self.train_labels)

    @property
    def test_size(self) -> int:
        return len(self.test_labels)

    @functools.cached_property
    def transform(self) -> BatchTransform:
        return BatchTransform(self.info)

    def train_batch(self, indices: torch.Tensor, *words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised training images ``indices``, augmented from ``seeded_rng(*words)`` when the dataset augments."""
        rng = seeded_rng(*words) if self.info.augment else None
        return (self.transform(self.train_images.index_select(0, indices), rng),
                self.train_labels.index_select(0, indices))

    def test_batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.test_images[start:stop]), self.test_labels[start:stop]


def load_data(dataset: str | DatasetChoice, data_dir: str | Path) -> ImageData | PluginData:
    """A built-in dataset (:func:`load_dataset`) or a plug-in's (:func:`shield_model.zoo.plugin_data.load_plugin_data`)
    read from ``data_dir``; cached per process either way."""
    choice = dataset_choice(dataset)
    if isinstance(choice, PluginSpec):
        from shield_model.zoo.plugin_data import load_plugin_data

        return load_plugin_data(choice, data_dir)
    return load_dataset(choice, data_dir)


def load_dataset(dataset: str | Dataset, data_dir: str | Path) -> ImageData:
    """Load ``dataset`` from ``data_dir`` (no download; see ``shield-agent prepare``). Cached per process."""
    return _load_cached(parse_dataset(dataset), Path(data_dir).expanduser().resolve())


@functools.lru_cache(maxsize=2)
def _load_cached(dataset: Dataset, data_dir: Path) -> ImageData:
    if not data_dir.is_dir():
        raise DatasetError(f"{dataset.value}: data directory {data_dir} does not exist")
    train_x, train_y, test_x, test_y = DATASETS[dataset].load(data_dir)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in (train_x, train_y, test_x, test_y)]
    for t in tensors:
        t.requires_grad_(False)
    return ImageData(dataset, *tensors)


class BatchTransform:
    """uint8 images -> normalised float32 input, optionally augmented. Deterministic given the RNG passed in."""

    PAD = 4

    def __init__(self, info: DatasetInfo) -> None:
        self.info = info
        std = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
        mean = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = mean / std

    def __call__(self, images: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Normalise ``images`` (n, C, H, W) uint8; when ``rng`` is given and the dataset augments, also apply
        reflect-pad + random crop + horizontal flip drawn from ``rng``."""
        x = images.to(torch.float32).mul_(self._scale).sub_(self._shift)
        if rng is not None and self.info.augment:
            x = self._augment(x, rng)
        return x

    def _augment(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        pad = self.PAD
        offsets = torch.from_numpy(rng.integers(0, 2 * pad + 1, size=(n, 2)))
        flips = torch.from_numpy(rng.random(n) < 0.5)
        padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        rows = offsets[:, :1] + torch.arange(h)
        cols = torch.arange(w).expand(n, w)
        cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]
        index_n = torch.arange(n).view(n, 1, 1, 1)
        index_c = torch.arange(c).view(1, c, 1, 1)
        return padded[index_n, index_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
