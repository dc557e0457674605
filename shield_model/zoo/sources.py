"""Where a dataset is read from: the one place that decides it. The PS, its local agents, a hand-started agent,
``shield-agent prepare``, ``shield-ps sweep`` and ``shield-ps evaluate`` all ask :func:`locate`.

In order:

1. ``--data-dir DIR`` when given: DIR must exist and hold the dataset. Nothing is created or downloaded there, so a
   mistyped path is an error, never a new folder.
2. The cache (``$SHIELD_DATA_DIR``, else ``~/.cache/shield/data``) when it holds the dataset.
3. With ``download=True`` (the PS's first use): the dataset fetched into the cache, as ``shield-agent prepare`` does.
4. The copy embedded in the package, for MNIST: its real 10,000-image test split (CC BY-SA 3.0, see NOTICE), split
   into 8,000 training and 2,000 held-out images. So the quick start runs offline with an empty cache.

Otherwise a :class:`~shield_model.errors.DatasetError` that says what to pass. Torch-free: only file names are
checked here; loading is :func:`shield_model.zoo.datasets.load_dataset`'s job.

A plug-in dataset (``--dataset MODULE:CALLABLE``) reads whatever it wants from the directory it is given: ``--data-dir
DIR`` when given (it must exist), else the cache directory, which need not exist (the plug-in may create it or
ignore it). Nothing is downloaded or checked here for it.
"""
from __future__ import annotations

import enum
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shield_model.errors import DatasetError
from shield_model.zoo.mnist_idx import missing_mnist
from shield_model.zoo.names import Dataset, DatasetChoice, choice_name, dataset_choice, parse_dataset
from shield_model.zoo.plugins import PluginSpec
from shield_model.zoo.readers import missing_cifar10, missing_cifar100, missing_svhn

log = logging.getLogger(__name__)

CACHE_ENV = "SHIELD_DATA_DIR"
DEFAULT_CACHE = "~/.cache/shield/data"
#: network timeout of a first-use download (seconds per connection attempt or read)
DOWNLOAD_TIMEOUT_S = 30.0

#: datasets shipped inside the package (directory in the IDX/CIFAR layout their loader reads)
EMBEDDED: dict[Dataset, Path] = {Dataset.MNIST: Path(__file__).resolve().parent / "embedded" / "mnist"}

#: dataset -> what its loader would miss in a directory (None: everything is there), checked by file name only
MISSING: dict[Dataset, Callable[[Path], str | None]] = {
    Dataset.MNIST: missing_mnist,
    Dataset.CIFAR10: missing_cifar10,
    Dataset.CIFAR100: missing_cifar100,
    Dataset.SVHN: missing_svhn,
}


class Origin(str, enum.Enum):
    """Why a directory was chosen."""

    GIVEN = "given"  # --data-dir
    CACHE = "cache"  # found in the cache
    DOWNLOADED = "downloaded"  # fetched into the cache just now
    EMBEDDED = "embedded"  # shipped with the package


@dataclass(frozen=True)
class DataLocation:
    """A directory that holds ``dataset``, and why it was chosen."""

    dataset: DatasetChoice
    path: Path
    origin: Origin

    @property
    def hand_on(self) -> str | None:
        """The ``--data-dir`` to give agents: this directory, except a plug-in's default (each agent uses its own
        cache directory then, which need not exist on the PS's machine either)."""
        if isinstance(self.dataset, PluginSpec) and self.origin is not Origin.GIVEN:
            return None
        return str(self.path)

    def describe(self) -> str:
        """One line for a log: which data and from where."""
        if isinstance(self.dataset, PluginSpec):
            return f"{self.dataset}: reads {self.path} ({self.origin.value})"
        if self.origin is Origin.EMBEDDED:
            return (f"{self.dataset.value}: the embedded test split ({self.path}); `shield-agent prepare --dataset "
                    f"{self.dataset.value}` fetches the full set into {cache_dir()} where there is internet access")
        return f"{self.dataset.value}: {self.path} ({self.origin.value})"


def cache_dir() -> Path:
    """Where datasets are cached and downloaded to: ``$SHIELD_DATA_DIR``, else ``~/.cache/shield/data``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def missing(dataset: Dataset, folder: Path) -> str | None:
    """What ``dataset``'s loader would miss in ``folder`` (None when it is all there)."""
    if not folder.is_dir():
        return f"the directory {folder}"
    return MISSING[dataset](folder)


def check_data_dir(dataset: str | Dataset, data_dir: str | Path) -> Path:
    """``data_dir`` (``~`` expanded) when it exists and holds ``dataset``; :class:`DatasetError` saying what is
    missing and what to do otherwise. Creates nothing."""
    data = parse_dataset(dataset)
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise DatasetError(f"--data-dir {data_dir} {what} (pass the directory that holds {data.value}, or leave "
                           f"--data-dir out to use {_default_text(data)})")
    absent = MISSING[data](folder)
    if absent is not None:
        raise DatasetError(f"--data-dir {data_dir} does not hold {data.value}: {absent} missing (run `shield-agent "
                           f"prepare --dataset {data.value} --data-dir {data_dir}` where there is internet access)")
    return folder


def locate(dataset: str | DatasetChoice, data_dir: str | Path | None = None, download: bool = False,
           timeout: float = DOWNLOAD_TIMEOUT_S) -> DataLocation:
    """The directory to read ``dataset`` from (see the module docstring for the order)."""
    choice = dataset_choice(dataset)
    if isinstance(choice, PluginSpec):
        return _locate_plugin(choice, data_dir)
    data = choice
    if data_dir is not None and str(data_dir) != "":
        return DataLocation(data, check_data_dir(data, data_dir), Origin.GIVEN)
    cache = cache_dir()
    if missing(data, cache) is None:
        return DataLocation(data, cache, Origin.CACHE)
    if download:
        try:
            _download(data, cache, timeout)
            return DataLocation(data, cache, Origin.DOWNLOADED)
        except DatasetError as exc:
            if data not in EMBEDDED:
                raise
            log.warning("%s: first-use download into %s failed (%s)", data.value, cache, str(exc).split(" (")[0])
    if data in EMBEDDED:
        return DataLocation(data, EMBEDDED[data], Origin.EMBEDDED)
    raise DatasetError(f"{data.value} is not in {cache} ({missing(data, cache)} missing): pass --data-dir DIR where "
                       f"it is, or run `shield-agent prepare --dataset {data.value}` (with internet access, or with "
                       "--from FILE: a local copy of its archive)")


def _locate_plugin(spec: PluginSpec, data_dir: str | Path | None) -> DataLocation:
    """A plug-in dataset's directory: ``data_dir`` when given (it must be a directory), else the cache directory."""
    if data_dir is None or str(data_dir) == "":
        return DataLocation(spec, cache_dir(), Origin.CACHE)
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise DatasetError(f"--data-dir {data_dir} {what} (pass the directory {choice_name(spec)} reads, or leave "
                           f"--data-dir out to give it {cache_dir()})")
    return DataLocation(spec, folder, Origin.GIVEN)


def _default_text(data: Dataset) -> str:
    embedded = " or the embedded test split" if data in EMBEDDED else ""
    return f"the cache {cache_dir()}{embedded}"


def _download(data: Dataset, cache: Path, timeout: float) -> None:
    """Fetch ``data`` into ``cache`` and verify it (a failure leaves no empty directory behind)."""
    from shield_model.zoo.prepare import prepare

    log.warning("%s is not in %s yet: downloading it (first use)", data.value, cache)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        prepare(data, cache)
    finally:
        socket.setdefaulttimeout(previous)
