"""Readers for the CIFAR binary archives and SVHN's .mat files, as laid out by ``shield-agent prepare``.

CIFAR is read from the *binary* version (fixed-size records: label byte(s) then 3x32x32 pixels), never from the
pickled Python version.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shield_model.errors import DatasetError

CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = ("test_batch.bin",)
CIFAR100_DIR = "cifar-100-binary"
CIFAR100_TRAIN, CIFAR100_TEST = ("train.bin",), ("test.bin",)
SVHN_TRAIN, SVHN_TEST = "train_32x32.mat", "test_32x32.mat"
_PIXELS = 3 * 32 * 32

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _require(path: Path, dataset: str, data_dir: Path) -> Path:
    if not path.is_file():
        raise DatasetError(
            f"{dataset}: {path.name} is missing; it should be at {path} "
            f"(run `shield-agent prepare --dataset {dataset} --data-dir {data_dir}` where there is internet access)")
    return path


def _missing(data_dir: Path, names: Sequence[str]) -> str | None:
    absent = [name for name in names if not (data_dir / name).is_file()]
    return ", ".join(absent) if absent else None


def missing_cifar10(data_dir: Path) -> str | None:
    """What :func:`load_cifar10` would miss in ``data_dir`` (None when every file is there)."""
    return _missing(data_dir, [f"{CIFAR10_DIR}/{n}" for n in CIFAR10_TRAIN + CIFAR10_TEST])


def missing_cifar100(data_dir: Path) -> str | None:
    """What :func:`load_cifar100` would miss in ``data_dir`` (None when every file is there)."""
    return _missing(data_dir, [f"{CIFAR100_DIR}/{n}" for n in CIFAR100_TRAIN + CIFAR100_TEST])


def missing_svhn(data_dir: Path) -> str | None:
    """What :func:`load_svhn` would miss in ``data_dir`` (None when every file is there)."""
    return _missing(data_dir, [SVHN_TRAIN, SVHN_TEST])


def read_cifar_records(paths: Sequence[Path], label_bytes: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,3,32,32) uint8 and labels int64 from CIFAR binary files; the label is the last label byte (the
    fine label for CIFAR-100)."""
    images, labels = [], []
    record = label_bytes + _PIXELS
    for path in paths:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DatasetError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records")
        rows = raw.reshape(-1, record)
        labels.append(rows[:, label_bytes - 1].astype(np.int64))
        images.append(rows[:, label_bytes:].reshape(-1, 3, 32, 32))
    y = np.concatenate(labels)
    if y.max() >= num_classes:
        raise DatasetError(f"{paths[0].parent}: label {int(y.max())} out of range for {num_classes} classes")
    return np.concatenate(images), y


def load_cifar10(data_dir: Path) -> Arrays:
    folder = data_dir / CIFAR10_DIR
    train = read_cifar_records([_require(folder / n, "Cifar10", data_dir) for n in CIFAR10_TRAIN], 1, 10)
    test = read_cifar_records([_require(folder / n, "Cifar10", data_dir) for n in CIFAR10_TEST], 1, 10)
    return (*train, *test)


def load_cifar100(data_dir: Path) -> Arrays:
    folder = data_dir / CIFAR100_DIR
    train = read_cifar_records([_require(folder / n, "Cifar100", data_dir) for n in CIFAR100_TRAIN], 2, 100)
    test = read_cifar_records([_require(folder / n, "Cifar100", data_dir) for n in CIFAR100_TEST], 2, 100)
    return (*train, *test)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,3,32,32) uint8 and labels 0-9 from an SVHN cropped-digits .mat file (label 10 means digit 0)."""
    from scipy.io import loadmat  # scipy.io is slow to import and only SVHN needs it

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise DatasetError(f"{path}: expected X of shape (32, 32, 3, N) and N labels")
    labels = y.reshape(-1).astype(np.int64) % 10
    return np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)), dtype=np.uint8), labels


def load_svhn(data_dir: Path) -> Arrays:
    train = read_svhn_mat(_require(data_dir / SVHN_TRAIN, "SVHN", data_dir))
    test = read_svhn_mat(_require(data_dir / SVHN_TEST, "SVHN", data_dir))
    return (*train, *test)
