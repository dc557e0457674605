"""Deterministic per-file gradients: the agent's compute core.

Step ``t``'s batch is a pure function of ``(seed, t)``: an epoch-wise permutation of the training set, seeded by
``(seed, epoch)``, cut into consecutive batches of ``b`` samples (the last partial batch of an epoch is dropped).
File ``i`` of ``f`` is the contiguous slice ``[i*b/f, (i+1)*b/f)`` of that batch, and its augmentation is drawn from
an RNG seeded by ``(seed, t, i)``; so are whatever a plug-in's dataset and model draw from the process-wide generators
(a random crop, dropout: :mod:`shield_model.zoo.seeds`). With a fixed torch thread count and deterministic
algorithms, honest workers that compute the same file get bit-identical gradients, which is what ByzShield's majority
vote relies on (Konstantinidis & Ramamoorthy, MLSys 2021, Sec. 3: each file is processed by r workers and the
majority of the r results wins). An operation without a deterministic kernel on the device only warns: that agent's
replicas then differ, and the determinism classes and the sketch vote take over (docs/byzantine.md).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from shield_model.device import resolve_device
from shield_model.errors import ComputeError
from shield_model.zoo.datasets import load_data
from shield_model.zoo.flat import FlatParameters
from shield_model.zoo.models import build_network, build_seeded_model, check_applicable
from shield_model.zoo.names import choice_name, dataset_choice, network_choice
from shield_model.zoo.seeds import SeededForward, seeded_rng

log = logging.getLogger(__name__)

# Domain-separation tags so the permutation, augmentation, BN-calibration and forward-pass streams never share a seed.
PERMUTATION_TAG = 0x5045524D
AUGMENT_TAG = 0x41554720
CALIBRATION_TAG = 0x43414C42
FORWARD_TAG = 0x46574420


@dataclass(frozen=True)
class ComputeSpec:
    """What an agent needs to compute any file of any step; every agent of a job gets the same spec."""

    network: str
    dataset: str
    data_dir: str
    seed: int
    batch_size: int
    num_files: int
    threads: int = 1
    device: str = "cpu"  # cpu, cuda, cuda:N or auto (shield_model.device)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ComputeError(f"seed must be >= 0, got {self.seed}")
        if self.batch_size < 1 or self.num_files < 1 or self.threads < 1:
            raise ComputeError("batch_size, num_files and threads must all be >= 1 "
                               f"(got {self.batch_size}, {self.num_files}, {self.threads})")
        if self.batch_size % self.num_files:
            raise ComputeError(f"batch size {self.batch_size} is not a multiple of the number of files "
                               f"{self.num_files}")

    @property
    def file_size(self) -> int:
        """Samples per file, ``b / f``."""
        return self.batch_size // self.num_files


@dataclass(frozen=True)
class FileGradient:
    """One file's result: the mean-loss gradient (float32, flat), its mean loss, sample count and wall time."""

    gradient: np.ndarray
    loss: float
    samples: int
    seconds: float


class BatchSchedule:
    """Sample indices of every step and file (see module docstring), for a training set of ``num_samples``."""

    def __init__(self, seed: int, num_samples: int, batch_size: int, num_files: int) -> None:
        if batch_size > num_samples:
            raise ComputeError(f"batch size {batch_size} exceeds the {num_samples} training samples")
        self.seed, self.num_samples = seed, num_samples
        self.batch_size, self.file_size = batch_size, batch_size // num_files
        self.num_files = num_files
        self.steps_per_epoch = num_samples // batch_size
        self._epoch = -1
        self._permutation = torch.empty(0, dtype=torch.int64)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The training-set permutation of ``epoch`` (cached for the current epoch)."""
        if epoch != self._epoch:
            order = seeded_rng(self.seed, epoch, PERMUTATION_TAG).permutation(self.num_samples)
            self._permutation, self._epoch = torch.from_numpy(order), epoch
        return self._permutation

    def batch(self, step: int) -> torch.Tensor:
        """Indices of step ``step``'s whole batch."""
        if step < 0:
            raise ComputeError(f"step must be >= 0, got {step}")
        epoch, position = divmod(step, self.steps_per_epoch)
        start = position * self.batch_size
        return self.permutation(epoch)[start:start + self.batch_size]

    def file(self, step: int, file: int) -> torch.Tensor:
        """Indices of file ``file`` of step ``step``: the slice ``[file*b/f, (file+1)*b/f)`` of its batch."""
        if not 0 <= file < self.num_files:
            raise ComputeError(f"file {file} out of range for {self.num_files} files")
        start = file * self.file_size
        return self.batch(step)[start:start + self.file_size]


def configure_torch(threads: int) -> None:
    """Fix the intra-op thread count and demand deterministic kernels (idempotent; call from the computing
    thread). An operation without a deterministic kernel warns instead of failing the file: its replicas may then
    differ, which the determinism classes and the sketch vote absorb, where a failed file would be dropped."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if not (torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()):
        # torch.use_deterministic_algorithms also sets the compiler's flag, and importing torch._inductor for it
        # costs ~2.5 s of CPU per process; eager kernels read only the C++ flag, which this sets alike.
        setter = getattr(torch._C, "_set_deterministic_algorithms", None)
        if setter is not None:
            setter(True, warn_only=True)
        else:
            torch.use_deterministic_algorithms(True, warn_only=True)


def initial_parameters(network: str, dataset: str, seed: int) -> np.ndarray:
    """A job's initial flat parameter vector (float32), without loading any data: the PS's starting point and
    exactly :meth:`GradientComputer.initial_parameters` for the same ``(network, dataset, seed)``. A plug-in dataset
    is sized once loaded: use :class:`GradientComputer` for it."""
    model = build_seeded_model(network, dataset, seed)
    return FlatParameters(model).values()


class GradientComputer:
    """Computes file gradients for one job. Not thread-safe: use one instance from one thread at a time."""

    def __init__(self, spec: ComputeSpec) -> None:
        self.spec = spec
        network, dataset = network_choice(spec.network), dataset_choice(spec.dataset)
        check_applicable(network, dataset)
        self.device = resolve_device(spec.device)
        configure_torch(spec.threads)
        self.data = load_data(dataset, spec.data_dir)
        self.model = build_network(network, self.data.num_classes, self.data.channels, spec.seed).to(self.device)
        self.model.train()
        self.forward = SeededForward(self.model, self.device)
        self.flat = FlatParameters(self.model, self.device)
        self._initial = self.flat.values()
        self.num_params: int = self.flat.num_params
        self.train_samples: int = self.data.train_size
        self.schedule = BatchSchedule(spec.seed, self.train_samples, spec.batch_size, spec.num_files)
        self.steps_per_epoch: int = self.schedule.steps_per_epoch
        log.info("compute: %s on %s, %d parameters, %d steps per epoch, %d samples per file, %d thread(s), %s",
                 choice_name(network), choice_name(dataset), self.num_params, self.steps_per_epoch, spec.file_size,
                 spec.threads, self.device)

    def initial_parameters(self) -> np.ndarray:
        """The job's initial parameter vector (float32, deterministic from the spec's seed)."""
        return self._initial.copy()

    def parameters_view(self) -> np.ndarray:
        """The model's own flat parameter storage. Decode a received vector straight into it and pass it to
        :meth:`file_gradient` to skip one copy per file."""
        return self.flat.array

    def file_inputs(self, step: int, file: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (augmented, normalised) input batch and labels of ``file`` at ``step``."""
        indices = self.schedule.file(step, file)
        images, labels = self.data.train_batch(indices, self.spec.seed, step, file, AUGMENT_TAG)
        if self.device.type != "cpu":
            return images.to(self.device), labels.to(self.device)
        return images, labels

    def file_gradient(self, params: np.ndarray, step: int, file: int, out: np.ndarray | None = None) -> FileGradient:
        """Gradient of the mean cross-entropy over file ``file`` of step ``step`` at ``params``, computed in train
        mode. Written into ``out`` (float32, ``(num_params,)``) when given, else into a new array."""
        started = time.perf_counter()
        configure_torch(self.spec.threads)
        if out is None:
            out = np.empty(self.num_params, dtype=np.float32)
        self.flat.check(out, "gradient output")
        self.flat.load(params)
        images, labels = self.file_inputs(step, file)
        for p in self.flat.params:
            p.grad = None
        loss = F.cross_entropy(self.forward(images, self.spec.seed, step, file, FORWARD_TAG), labels)
        loss.backward()
        self.flat.gradient(out)
        return FileGradient(out, float(loss.detach()), len(labels), time.perf_counter() - started)
