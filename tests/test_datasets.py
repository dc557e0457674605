"""Datasets: the offline MNIST split, IDX parsing of good and bad files, the CIFAR binary and SVHN .mat readers,
errors that say which file is missing and where, and the normalisation/augmentation transform."""
from __future__ import annotations

import gzip
import logging
import shutil

import numpy as np
import pytest
import torch

from shield_model.errors import DatasetError
from shield_model.zoo import readers
from shield_model.zoo.datasets import DATASETS, BatchTransform, Dataset, load_dataset, parse_dataset
from shield_model.zoo.mnist_idx import load_mnist_arrays, read_idx
from tests.runtime_helpers import MNIST_DIR


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def test_offline_mnist_is_split_8000_2000_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        train_x, train_y, test_x, test_y = load_mnist_arrays(MNIST_DIR)
    assert "only the 10000-image test split" in caplog.text
    assert train_x.shape == (8000, 1, 28, 28) and test_x.shape == (2000, 1, 28, 28)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64
    images = read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert np.array_equal(test_x[:, 0], images[4::5]) and np.array_equal(test_y, labels[4::5])
    assert np.array_equal(train_x[:4, 0], images[:4]) and np.array_equal(train_x[4, 0], images[5])
    assert set(np.unique(test_y)) == set(range(10)) and set(np.unique(train_y)) == set(range(10))


def test_load_dataset_returns_tensors_and_caches():
    data = load_dataset("mnist", MNIST_DIR)
    assert data.dataset is Dataset.MNIST and data.info.num_classes == 10
    assert data.train_images.dtype == torch.uint8 and data.train_labels.dtype == torch.int64
    assert load_dataset(Dataset.MNIST, str(MNIST_DIR)) is data


def test_full_mnist_and_torchvision_layout_are_used_without_splitting(tmp_path, caplog):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_DIR / name, raw / name)
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, size=(30, 28, 28))
    (raw / "train-images-idx3-ubyte").write_bytes(idx_bytes(train_images))  # plain, not gzip
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(30) % 10))
    with caplog.at_level(logging.WARNING):
        train_x, train_y, test_x, _ = load_mnist_arrays(tmp_path)
    assert caplog.text == ""
    assert np.array_equal(train_x[:, 0], train_images) and np.array_equal(train_y, np.arange(30) % 10)
    assert test_x.shape == (10000, 1, 28, 28)


@pytest.mark.parametrize("damage,message", [
    (lambda b: b[:-1], "declares shape"),
    (lambda b: b + b"x", "declares shape"),
    (lambda b: b"\x00\x00\x0d" + b[3:], "not an IDX file"),
    (lambda b: b[:6], "truncated"),
    (lambda b: b[:4] + np.uint32(1 << 31).astype(">u4").tobytes() + b[8:], "declares shape"),
])
def test_damaged_idx_files_are_refused(tmp_path, damage, message):
    good = idx_bytes(np.arange(12).reshape(3, 2, 2))
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(damage(good)))
    with pytest.raises(DatasetError, match=message):
        read_idx(path)
    path.write_bytes(gzip.compress(good))
    assert read_idx(path).shape == (3, 2, 2)


def test_missing_mnist_names_the_files_and_the_folder(tmp_path):
    with pytest.raises(DatasetError, match=rf"t10k-images-idx3-ubyte\.gz .*should be in {tmp_path}.*prepare"):
        load_mnist_arrays(tmp_path)
    shutil.copy(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(DatasetError, match=rf"t10k-images-idx3-ubyte\(\.gz\) is missing; it should be in {tmp_path}"):
        load_mnist_arrays(tmp_path)


@pytest.mark.parametrize("dataset,missing", [("Cifar10", "cifar-10-batches-bin/data_batch_1.bin"),
                                             ("Cifar100", "cifar-100-binary/train.bin"),
                                             ("SVHN", "train_32x32.mat")])
def test_missing_files_of_other_datasets_are_named_with_their_place(tmp_path, dataset, missing):
    with pytest.raises(DatasetError, match=f"it should be at {tmp_path / missing}"):
        load_dataset(dataset, tmp_path)


def test_missing_directory_and_unknown_dataset(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("MNIST", tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="choose from MNIST, Cifar10, Cifar100, SVHN"):
        parse_dataset("ImageNet")


def test_cifar_binary_records(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    folder = tmp_path / readers.CIFAR100_DIR
    folder.mkdir()
    coarse, fine = np.arange(6) % 20, np.array([99, 0, 5, 42, 7, 1])
    for name in ("train.bin", "test.bin"):
        rows = np.concatenate([coarse[:, None], fine[:, None], images.reshape(6, -1)], axis=1).astype(np.uint8)
        rows.tofile(folder / name)
    train_x, train_y, test_x, test_y = readers.load_cifar100(tmp_path)
    assert np.array_equal(train_x, images) and np.array_equal(train_y, fine)  # the fine label, channels first
    (folder / "test.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(DatasetError, match="whole number"):
        readers.load_cifar100(tmp_path)
    rows[0, 1] = 100
    rows.tofile(folder / "test.bin")
    with pytest.raises(DatasetError, match="out of range"):
        readers.load_cifar100(tmp_path)


def test_svhn_mat_layout_and_label_ten_is_zero(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(4, 3, 32, 32), dtype=np.uint8)
    labels = np.array([[10], [1], [9], [10]], dtype=np.uint8)
    for name in (readers.SVHN_TRAIN, readers.SVHN_TEST):
        savemat(tmp_path / name, {"X": np.transpose(images, (2, 3, 1, 0)), "y": labels})
    data = load_dataset("SVHN", tmp_path)
    assert torch.equal(data.train_images, torch.from_numpy(images))
    assert data.test_labels.tolist() == [0, 1, 9, 0]
    savemat(tmp_path / readers.SVHN_TEST, {"X": np.zeros((32, 32, 4)), "y": labels})
    with pytest.raises(DatasetError, match="expected X"):
        readers.load_svhn(tmp_path)


def test_normalisation_matches_the_paper_constants():
    transform = BatchTransform(DATASETS[Dataset.MNIST])
    x = transform(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1), np.random.default_rng(0))
    assert x.dtype == torch.float32
    np.testing.assert_allclose(x.view(-1).numpy(), [-0.1307 / 0.3081, (1 - 0.1307) / 0.3081], rtol=1e-6)
    cifar = BatchTransform(DATASETS[Dataset.CIFAR10])
    y = cifar(torch.full((1, 3, 32, 32), 128, dtype=torch.uint8))  # no RNG: no augmentation
    np.testing.assert_allclose(y[0, :, 0, 0].numpy(), (128 - np.array([125.3, 123.0, 113.9])) /
                               np.array([63.0, 62.1, 66.7]), rtol=1e-5)


def test_augmentation_is_a_seeded_crop_of_the_reflect_padded_image_maybe_flipped():
    transform = BatchTransform(DATASETS[Dataset.SVHN])
    images = torch.from_numpy(np.random.default_rng(3).integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8))
    out = transform(images, np.random.default_rng(7))
    assert torch.equal(out, transform(images, np.random.default_rng(7)))
    assert not torch.equal(out, transform(images, np.random.default_rng(8)))
    padded = torch.nn.functional.pad(transform(images), (4, 4, 4, 4), mode="reflect")
    for sample in range(6):
        crops = [padded[sample, :, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
        candidates = crops + [c.flip(-1) for c in crops]
        assert sum(torch.equal(out[sample], c) for c in candidates) >= 1
