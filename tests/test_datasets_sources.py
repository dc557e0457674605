"""Which directory a dataset is read from (shield_model.zoo.sources.locate): a given --data-dir is checked and never
created, the cache is used when it holds the dataset, a first-use download goes into the cache (here from a local
mirror, never the internet), and MNIST falls back to the copy embedded in the package."""
from __future__ import annotations

import shutil

import pytest

from shield_model.errors import DatasetError
from shield_model.zoo import prepare as prepare_module
from shield_model.zoo.datasets import load_dataset
from shield_model.zoo.names import Dataset
from shield_model.zoo.prepare import Download, md5_of
from shield_model.zoo.sources import CACHE_ENV, EMBEDDED, Origin, cache_dir, check_data_dir, locate
from tests.runtime_helpers import MNIST_DIR
from tests.test_datasets_prepare import Mirror

TEST_SPLIT = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache that does not exist yet (as under an empty HOME)."""
    folder = tmp_path / "home" / ".cache" / "shield" / "data"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def test_the_embedded_copy_is_mnist_real_test_split():
    folder = EMBEDDED[Dataset.MNIST]
    assert sorted(p.name for p in folder.glob("*.gz")) == sorted(TEST_SPLIT)
    from torchvision.datasets import MNIST

    ours = {item.filename: item.md5 for item in prepare_module.DOWNLOADS[Dataset.MNIST]()}
    assert ours == dict(MNIST.resources)  # the files, checksums and mirrors prepare fetches are torchvision's
    assert {url.rsplit("/", 1)[0] + "/" for item in prepare_module.DOWNLOADS[Dataset.MNIST]()
            for url in item.urls} == set(MNIST.mirrors)
    for name in TEST_SPLIT:  # unmodified: the checksums of the published files
        assert md5_of(folder / name) == ours[name]
    data = load_dataset(Dataset.MNIST, folder)
    assert (len(data.train_labels), len(data.test_labels)) == (8000, 2000)
    assert "CC BY-SA 3.0" in (folder / "README.md").read_text()


def test_no_data_dir_and_an_empty_cache_uses_the_embedded_mnist(cache):
    where = locate("mnist")
    assert (where.origin, where.path) == (Origin.EMBEDDED, EMBEDDED[Dataset.MNIST])
    assert "embedded" in where.describe() and "shield-agent prepare --dataset MNIST" in where.describe()
    assert not cache.parent.parent.exists()  # looking created nothing


def test_a_cache_holding_the_dataset_wins_over_the_embedded_copy(cache):
    cache.mkdir(parents=True)
    for name in TEST_SPLIT:
        shutil.copy(MNIST_DIR / name, cache / name)
    assert locate(Dataset.MNIST) == locate(Dataset.MNIST, download=True)
    assert locate(Dataset.MNIST).origin is Origin.CACHE and cache_dir() == cache


def test_a_dataset_without_an_embedded_copy_says_what_to_pass(cache):
    with pytest.raises(DatasetError) as caught:
        locate("Cifar10")
    message = str(caught.value)
    assert "pass --data-dir DIR" in message and "shield-agent prepare --dataset Cifar10" in message
    assert str(cache) in message


def test_a_mistyped_data_dir_is_an_error_and_creates_nothing(tmp_path):
    typo = tmp_path / "mnsit" / "data"
    with pytest.raises(DatasetError, match="does not exist"):
        locate("MNIST", typo, download=True)
    with pytest.raises(DatasetError, match="is not a directory"):
        check_data_dir("MNIST", MNIST_DIR / TEST_SPLIT[0])
    assert list(tmp_path.iterdir()) == []


def test_a_data_dir_without_the_dataset_names_what_is_missing(tmp_path):
    shutil.copy(MNIST_DIR / TEST_SPLIT[1], tmp_path / TEST_SPLIT[1])
    with pytest.raises(DatasetError) as caught:
        locate("MNIST", tmp_path, download=True)
    message = str(caught.value)
    assert f"--data-dir {tmp_path} does not hold MNIST: t10k-images-idx3-ubyte(.gz) missing" in message
    assert f"shield-agent prepare --dataset MNIST --data-dir {tmp_path}" in message
    assert [p.name for p in tmp_path.iterdir()] == [TEST_SPLIT[1]]  # nothing downloaded into a given directory


def test_one_file_of_the_training_split_alone_is_missing_data(tmp_path):
    for name in TEST_SPLIT:
        shutil.copy(MNIST_DIR / name, tmp_path / name)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte"):
        check_data_dir("MNIST", tmp_path)


def test_first_use_downloads_into_the_cache(cache, tmp_path, monkeypatch):
    served = tmp_path / "served"
    (served / "files").mkdir(parents=True)
    for name in TEST_SPLIT:
        shutil.copy(MNIST_DIR / name, served / "files" / name)
    mirror = Mirror(served)
    try:
        items = tuple(Download(i.filename, i.md5, (f"{mirror.url}/{i.filename}",))
                      for i in prepare_module.DOWNLOADS[Dataset.MNIST]() if i.filename in TEST_SPLIT)
        monkeypatch.setitem(prepare_module.DOWNLOADS, Dataset.MNIST, lambda: items)
        assert locate("MNIST").origin is Origin.EMBEDDED  # without download=True nothing is fetched
        assert mirror.requests == []
        where = locate("MNIST", download=True)
    finally:
        mirror.close()
    assert (where.origin, where.path) == (Origin.DOWNLOADED, cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(TEST_SPLIT)
    assert locate("MNIST").origin is Origin.CACHE


def test_offline_first_use_falls_back_to_the_embedded_copy_and_leaves_no_empty_cache(cache, tmp_path, monkeypatch):
    served = tmp_path / "served"
    (served / "files").mkdir(parents=True)  # a mirror that answers 404 for every file: as good as offline
    mirror = Mirror(served)
    try:
        items = tuple(Download(i.filename, i.md5, (f"{mirror.url}/{i.filename}",))
                      for i in prepare_module.DOWNLOADS[Dataset.MNIST]())
        monkeypatch.setitem(prepare_module.DOWNLOADS, Dataset.MNIST, lambda: items)
        where = locate("MNIST", download=True)
        assert mirror.requests  # it did try
    finally:
        mirror.close()
    assert where.origin is Origin.EMBEDDED
    assert not (tmp_path / "home").exists()
