"""A plug-in dataset (``--dataset MODULE:CALLABLE``) as the compute core reads it, and the one check of a plug-in
job before anything starts (docs/your-model.md).

Training samples are read from the plug-in's own dataset for every file, with the process-wide generators seeded
from the file's words (:func:`~shield_model.zoo.seeds.seeded_globals`): an ``__getitem__`` that augments at random
draws the same numbers on every replica of a file and new ones at every step, as the built-in augmentation does.
The held-out split is read once (seeded too) and kept as one float32 tensor. Samples are cast to float32 and fed to
the network as they are: a plug-in normalises its own data.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from shield_model.errors import PluginError
from shield_model.zoo.plugins import PluginSpec, describe_call_error, load_callable
from shield_model.zoo.seeds import seed_of, seeded_globals

log = logging.getLogger(__name__)

# Domain-separation tags of the plug-in dataset's seeded reads (the training files' words come from the caller).
TEST_TAG = 0x54455354
SCAN_TAG = 0x5343414E
CHECK_TAG = 0x43484B20
MAX_CLASSES = 1 << 20


class PluginData:
    """A plug-in's ``(train, test)`` datasets behind :class:`~shield_model.zoo.datasets.TrainingData`. Construction
    validates the contract and raises :class:`PluginError` saying what is wrong."""

    def __init__(self, spec: PluginSpec, train: Any, test: Any) -> None:
        self.spec, self.name = spec, spec.text
        self._train, self._test = train, test
        self.train_size = _length(spec, train, "train")
        self.test_size = _length(spec, test, "test")
        with seeded_globals(seed_of(TEST_TAG)):
            first, _ = self._pair(train, 0, "train")
            self.sample_shape: tuple[int, ...] = tuple(first.shape)
            self.test_inputs, self.test_labels = self._read(test, range(self.test_size), "test")
        self.channels = self.sample_shape[0] if self.sample_shape else 1
        self.num_classes = self._classes()
        self._check_labels(self.test_labels, "test")

    def train_batch(self, indices: torch.Tensor, *words: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training samples ``indices``, read with the process-wide generators seeded from ``words``."""
        with seeded_globals(seed_of(*words)):
            inputs, labels = self._read(self._train, indices.tolist(), "train")
        self._check_labels(labels, "train")
        return inputs, labels

    def test_batch(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_inputs[start:stop], self.test_labels[start:stop]

    def _classes(self) -> int:
        """``num_classes`` of the training set when it says (an int, or ``len(classes)``), else the largest label of
        both splits plus one (the training labels are read once for that: declare ``num_classes`` to skip it)."""
        declared = getattr(self._train, "num_classes", None)
        if declared is None and isinstance(getattr(self._train, "classes", None), (list, tuple)):
            declared = len(self._train.classes)
        if declared is not None:
            if isinstance(declared, bool) or not isinstance(declared, int) or not 2 <= declared <= MAX_CLASSES:
                raise PluginError(f"--dataset {self.spec}: the training set's num_classes must be an integer in "
                                  f"2..{MAX_CLASSES}, got {declared!r}")
            return declared
        with seeded_globals(seed_of(SCAN_TAG)):
            labels = [self._pair(self._train, i, "train")[1] for i in range(self.train_size)]
        largest = max(max(labels), int(self.test_labels.max()) if self.test_size else 0)
        if largest < 1:
            raise PluginError(f"--dataset {self.spec}: every label is 0: a classifier needs at least two classes")
        return largest + 1

    def _check_labels(self, labels: torch.Tensor, split: str) -> None:
        if len(labels) and int(labels.max()) >= self.num_classes:
            raise PluginError(f"--dataset {self.spec}: a {split} label is {int(labels.max())}, outside "
                              f"0..{self.num_classes - 1} (the training set's num_classes)")

    def _read(self, dataset: Any, indices: Iterable[int], split: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, labels = [], []
        for index in indices:
            x, y = self._pair(dataset, index, split)
            if tuple(x.shape) != self.sample_shape:
                raise PluginError(f"--dataset {self.spec}: {split} sample {index} has shape {tuple(x.shape)}, training "
                                  f"sample 0 {self.sample_shape}: every sample must have one shape")
            inputs.append(x)
            labels.append(y)
        if not inputs:
            return torch.empty((0, *self.sample_shape)), torch.empty(0, dtype=torch.int64)
        return torch.stack(inputs), torch.tensor(labels, dtype=torch.int64)

    def _pair(self, dataset: Any, index: int, split: str) -> tuple[torch.Tensor, int]:
        """``dataset[index]`` checked to be a ``(tensor, int)`` pair; the tensor cast to float32."""
        try:
            item = dataset[index]
        except Exception as exc:  # noqa: BLE001 (the user's code: reported in one line)
            raise describe_call_error(self.spec, "--dataset", f"reading {split} sample {index}", exc) from None
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            got = f"a {len(item)}-tuple" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
            raise PluginError(f"--dataset {self.spec}: {split} sample {index} is {got}, expected a (tensor, int) pair")
        x, y = item
        if not isinstance(x, torch.Tensor) or x.is_complex() or x.dtype == torch.bool:
            raise PluginError(f"--dataset {self.spec}: {split} sample {index}'s input is a "
                              f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}, expected a real "
                              "torch tensor (torch.as_tensor converts arrays)")
        label = _label(y)
        if label is None:
            raise PluginError(f"--dataset {self.spec}: {split} sample {index}'s label is {y!r}, expected an int >= 0")
        return x.detach().to(torch.float32), label


def _label(y: Any) -> int | None:
    """``y`` as a non-negative int (an int, a numpy integer or a one-element integer tensor), else None."""
    if isinstance(y, torch.Tensor):
        if y.numel() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            return None
        y = int(y.item())
    elif isinstance(y, np.integer):
        y = int(y)
    if isinstance(y, bool) or not isinstance(y, int) or y < 0:
        return None
    return y


def _length(spec: PluginSpec, dataset: Any, split: str) -> int:
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise PluginError(f"--dataset {spec}: the {split} set is a {type(dataset).__name__}, expected a map-style "
                          "dataset (with __len__ and __getitem__, e.g. a torch.utils.data.Dataset)")
    try:
        size = len(dataset)
    except Exception as exc:  # noqa: BLE001
        raise describe_call_error(spec, "--dataset", f"len() of the {split} set", exc) from None
    if size < 1:
        raise PluginError(f"--dataset {spec}: the {split} set is empty")
    return size


def load_plugin_data(spec: PluginSpec, data_dir: str | Path) -> PluginData:
    """``CALLABLE(data_dir)`` of a plug-in dataset, checked (:class:`PluginData`). Cached per process."""
    return _load_cached(spec, Path(data_dir).expanduser().resolve())


@functools.lru_cache(maxsize=2)
def _load_cached(spec: PluginSpec, data_dir: Path) -> PluginData:
    load = load_callable(spec, "--dataset")
    try:
        result = load(data_dir)
    except Exception as exc:  # noqa: BLE001
        raise describe_call_error(spec, "--dataset", f"{spec.name}({str(data_dir)!r})", exc) from None
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        got = f"a {len(result)}-tuple" if isinstance(result, (tuple, list)) else f"a {type(result).__name__}"
        raise PluginError(f"--dataset {spec}: {spec.name}(data_dir) returned {got}, expected (train, test)")
    data = PluginData(spec, *result)
    log.info("%s: %d training and %d held-out samples of shape %s, %d classes", spec, data.train_size,
             data.test_size, data.sample_shape, data.num_classes)
    return data


def check_model(network: str, dataset: str, data_dir: str | Path, seed: int = 0) -> None:
    """Load ``dataset``, build ``network`` for it and run one training forward and backward pass on two samples and
    one evaluation pass on two held-out samples: the checks a job gets once, before any agent starts.
    :class:`PluginError` (or another ShieldModelError) saying what does not fit."""
    from shield_model.zoo.datasets import load_data
    from shield_model.zoo.models import build_network, check_applicable

    data = load_data(dataset, data_dir)
    check_applicable(network, dataset)
    model = build_network(network, data.num_classes, data.channels, seed)
    n = min(2, data.train_size)
    inputs, labels = data.train_batch(torch.arange(n), seed, CHECK_TAG)
    with seeded_globals(seed_of(seed, CHECK_TAG)):
        logits = _forward(model.train(), inputs, network, data, "a training")
        loss = F.cross_entropy(logits, labels)
        if not torch.isfinite(loss):
            raise PluginError(f"--network {network}: the loss of two training samples at the initial weights is "
                              f"{float(loss)}")
        loss.backward()
    with torch.no_grad():
        test_inputs, _ = data.test_batch(0, min(2, data.test_size))
        _forward(model.eval(), test_inputs, network, data, "an evaluation")


def _forward(model: Any, inputs: torch.Tensor, network: str, data: Any, what: str) -> torch.Tensor:
    shape = tuple(inputs.shape)
    try:
        logits = model(inputs)
    except Exception as exc:  # noqa: BLE001
        raise PluginError(f"--network {network} on --dataset {data.name}: {what} forward pass on a batch of shape "
                          f"{shape} raised {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
    want = (shape[0], data.num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want or not logits.is_floating_point():
        got = (f"{logits.dtype} of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
               else f"a {type(logits).__name__}")
        raise PluginError(f"--network {network} on --dataset {data.name}: {what} forward pass on a batch of shape "
                          f"{shape} returned {got}, expected float logits of shape {want}")
    return logits
