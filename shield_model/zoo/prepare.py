"""Download and verify a dataset once, so a cluster can be prepared ahead of a job (``shield-agent prepare``).

Sources and MD5 checksums are torchvision's for MNIST (written out here) and SVHN, and the dataset authors' for the
CIFAR binary archives (read without unpickling). A file already present with the right checksum is not fetched again; a
download with the wrong checksum is deleted and refused. Offline, the error names the file and where it should go.

``--from PATH`` takes the files from a local copy instead (a machine without internet access, a copy on a shared
disk): PATH is one of the dataset's files under any name (e.g. the CIFAR-10 binary archive), recognised by its MD5,
or a directory holding them under their usual names. A file is checked before anything is copied, copied under a
temporary name and renamed into place, so a wrong or truncated copy leaves the data directory as it was.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shield_model.errors import DatasetError
from shield_model.zoo.names import Dataset, parse_dataset

if TYPE_CHECKING:
    from shield_model.zoo.datasets import ImageData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Download:
    """One file to fetch: its name in the data directory, MD5, source URLs in order of preference, and whether it
    is a .tar.gz archive to unpack in place."""

    filename: str
    md5: str
    urls: tuple[str, ...]
    extract: bool = False


#: MNIST's files, their MD5s and mirrors (the same as torchvision's, without importing it: a first use that finds
#: no network must fail fast, it then falls back to the embedded copy)
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_FILES = (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
               ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
               ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
               ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"))


def _mnist() -> tuple[Download, ...]:
    return tuple(Download(name, md5, tuple(m + name for m in MNIST_MIRRORS)) for name, md5 in MNIST_FILES)


def _svhn() -> tuple[Download, ...]:
    from torchvision.datasets import SVHN

    return tuple(Download(name, md5, (url,)) for url, name, md5 in (SVHN.split_list[s] for s in ("train", "test")))


_TORONTO = "https://www.cs.toronto.edu/~kriz/"

#: Dataset -> the files that make it up (a function, so torchvision is imported only when preparing).
DOWNLOADS = {
    Dataset.MNIST: _mnist,
    Dataset.CIFAR10: lambda: (Download("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530",
                                       (_TORONTO + "cifar-10-binary.tar.gz",), extract=True),),
    Dataset.CIFAR100: lambda: (Download("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8",
                                        (_TORONTO + "cifar-100-binary.tar.gz",), extract=True),),
    Dataset.SVHN: _svhn,
}


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, path: Path) -> None:
    """Stream ``url`` into ``path`` through ``path.part``, so a cut download never looks like a file (torch-free:
    a first use without network fails in well under a second)."""
    partial = path.with_name(path.name + ".part")
    request = urllib.request.Request(url, headers={"User-Agent": "shield"})
    try:
        with urllib.request.urlopen(request) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _fetch(item: Download, data_dir: Path, mirror: str | None) -> Path:
    """Fetch ``item`` into ``data_dir`` unless present with the right checksum; returns its path."""
    path = data_dir / item.filename
    if path.is_file() and md5_of(path) == item.md5:
        log.info("%s already present and verified", path)
        return path
    urls = (mirror.rstrip("/") + "/" + item.filename,) if mirror else item.urls
    failures = []
    for url in urls:
        try:
            download(url, path)
        except (OSError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
            continue
        got = md5_of(path) if path.is_file() else "nothing"
        if got == item.md5:
            return path
        path.unlink(missing_ok=True)
        raise DatasetError(f"{url}: checksum mismatch (MD5 {got}, expected {item.md5}); the download was deleted")
    raise DatasetError(f"{item.filename} is missing and could not be downloaded ({'; '.join(failures)}); "
                       f"copy it to {path} by hand")


def _extract(archive: Path, data_dir: Path) -> None:
    """Unpack a .tar.gz into ``data_dir``, refusing links and paths that leave it."""
    root = data_dir.resolve()
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            target = (root / member.name).resolve()
            if not (member.isfile() or member.isdir()) or root not in (target, *target.parents):
                raise DatasetError(f"{archive}: refusing archive member {member.name!r}")
        tar.extractall(root, members=members)


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories a failed prepare created (innermost first), as long as they are empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


def _local_copies(items: tuple[Download, ...], source: Path) -> dict[str, Path]:
    """item file name -> the local file that holds it: ``source`` itself when it is a file (matched by MD5; an
    error names what it should be), else each item's name inside the directory ``source`` (where present)."""
    if source.is_dir():
        return {item.filename: source / item.filename for item in items if (source / item.filename).is_file()}
    if not source.is_file():
        raise DatasetError(f"--from {source}: no such file or directory")
    digest = md5_of(source)
    for item in items:
        if item.md5 == digest:
            return {item.filename: source}
    wanted = ", ".join(f"{item.filename} (MD5 {item.md5})" for item in items)
    raise DatasetError(f"--from {source}: MD5 {digest} is not a file of this dataset; expected {wanted}. Nothing "
                       "was copied")


def _copy_verified(item: Download, source: Path, data_dir: Path) -> Path:
    """Copy ``source`` to ``data_dir/item.filename`` if its MD5 is the item's (atomically); DatasetError if not."""
    import shutil
    import tempfile

    target = data_dir / item.filename
    if target.is_file() and md5_of(target) == item.md5:
        log.info("%s already present and verified", target)
        return target
    got = md5_of(source)
    if got != item.md5:
        raise DatasetError(f"{source}: MD5 {got}, expected {item.md5} for {item.filename} (a damaged or different "
                           "copy); nothing was copied")
    if source.resolve() == target.resolve():
        return target
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=data_dir)
    try:
        with open(fd, "wb") as out, open(source, "rb") as stream:
            shutil.copyfileobj(stream, out, 1 << 20)
        if md5_of(Path(tmp)) != item.md5:
            raise DatasetError(f"copying {source} to {target} changed its content (the disk?); nothing was kept")
        Path(tmp).replace(target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def prepare(dataset: str | Dataset, data_dir: str | Path, mirror: str | None = None,
            source: str | Path | None = None) -> ImageData:
    """Download (if needed), verify and unpack ``dataset`` into ``data_dir``, then load it as a final check.
    ``source``: take the files from this local file or directory (see the module) instead of downloading them;
    those it does not hold are fetched as usual."""
    from shield_model.zoo.datasets import _load_cached, load_dataset

    data = parse_dataset(dataset)
    folder = Path(data_dir).expanduser()
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    items = DOWNLOADS[data]()
    try:
        local = _local_copies(items, Path(source).expanduser()) if source is not None else {}
        for item in items:
            path = _copy_verified(item, local[item.filename], folder) if item.filename in local else \
                _fetch(item, folder, mirror)
            if item.extract:
                _extract(path, folder)
    except DatasetError:
        _remove_empty(created)
        raise
    _load_cached.cache_clear()  # a load from before the download may be cached (e.g. MNIST's test-only split)
    return load_dataset(data, folder)
