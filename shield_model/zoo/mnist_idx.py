"""MNIST from IDX files (plain or gzip) already on disk, without any download.

Looks in ``data_dir`` and in torchvision's layout ``data_dir/MNIST/raw``. With the full dataset there, the usual
60,000/10,000 split is used. With only the 10,000-image test split (our offline data), it is split deterministically
into 8,000 training and 2,000 held-out images (every fifth image is held out, so both halves of the test set, which
come from different writer populations, are represented in each part) and a warning says so.
"""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np

from shield_model.errors import DatasetError

log = logging.getLogger(__name__)

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
#: every HELD_OUT_EVERY-th image of the test split is held out when the training split is absent.
HELD_OUT_EVERY = 5
#: generous bound on an IDX payload (MNIST train images are 47 MB); a larger header is a corrupt or hostile file.
MAX_IDX_BYTES = 1 << 30
_IDX_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file of unsigned bytes (``.gz`` or plain) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read(MAX_IDX_BYTES + 1024)
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape, dtype=np.int64))
    if size > MAX_IDX_BYTES or len(data) != header + size:
        raise DatasetError(f"{path}: IDX header declares shape {shape} but the file holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(data_dir: Path, name: str) -> Path | None:
    """The first existing file for IDX ``name`` (plain or .gz) in ``data_dir`` or ``data_dir/MNIST/raw``."""
    for folder in (data_dir, data_dir / "MNIST" / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _pair(data_dir: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray] | None:
    image_path, label_path = find_idx(data_dir, images), find_idx(data_dir, labels)
    if image_path is None and label_path is None:
        return None
    if image_path is None or label_path is None:
        name = images if image_path is None else labels
        raise DatasetError(f"MNIST: {name}(.gz) is missing; it should be in {data_dir}")
    x, y = read_idx(image_path), read_idx(label_path)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(x) != len(y) or (y.size and y.max() > 9):
        raise DatasetError(f"MNIST: {image_path} / {label_path} do not hold matching 28x28 images and labels 0-9")
    return x, y


def missing_mnist(data_dir: Path) -> str | None:
    """What :func:`load_mnist_arrays` would miss in ``data_dir`` (None when the files are there), without reading
    them: the test split's two files, and the training split's second file when only one of them is there."""
    for images, labels, required in ((TEST_IMAGES, TEST_LABELS, True), (TRAIN_IMAGES, TRAIN_LABELS, False)):
        found = [name for name in (images, labels) if find_idx(data_dir, name) is not None]
        if len(found) == 1 or (required and not found):
            return " and ".join(f"{name}(.gz)" for name in (images, labels) if name not in found)
    return None


def load_mnist_arrays(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images (N,1,28,28) uint8, train_labels int64, test_images, test_labels)`` from the IDX files."""
    test = _pair(data_dir, TEST_IMAGES, TEST_LABELS)
    if test is None:
        raise DatasetError(
            f"MNIST: {TEST_IMAGES}.gz and {TEST_LABELS}.gz are missing; they should be in {data_dir} "
            f"(run `shield-agent prepare --dataset MNIST --data-dir {data_dir}` where there is internet access)")
    train = _pair(data_dir, TRAIN_IMAGES, TRAIN_LABELS)
    if train is None:
        held = np.arange(len(test[0])) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        log.warning("MNIST: only the %d-image test split is in %s; training on %d of its images and holding out "
                    "%d (every %dth) for evaluation", len(held), data_dir, int((~held).sum()), int(held.sum()),
                    HELD_OUT_EVERY)
        train = (test[0][~held], test[1][~held])
        test = (test[0][held], test[1][held])
    return (train[0][:, None].copy(), train[1].astype(np.int64), test[0][:, None].copy(), test[1].astype(np.int64))
