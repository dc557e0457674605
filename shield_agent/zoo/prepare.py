"""Download and verify a dataset once, so a cluster can be prepared ahead of a job (``shield-agent prepare``).

Sources and MD5 checksums are torchvision's for MNIST and SVHN, and the dataset authors' for the CIFAR binary
archives (read without unpickling). A file already present with the right checksum is not fetched again; a
download with the wrong checksum is deleted and refused. Offline, the error names the file and where it should go.

``--from PATH`` takes the files from a local copy instead (a machine without internet access, a copy on a shared
disk): PATH is one of the dataset's files under any name (e.g. the CIFAR-10 binary archive), recognised by its MD5,
or a directory holding them under their usual names. A file is checked before anything is copied, copied under a
temporary name and renamed into place, so a wrong or truncated copy leaves the data directory as it was.
"""
from __future__ import annotations

import hashlib
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path

from shield_agent.errors import DatasetError
from shield_agent.zoo.datasets import Dataset, ImageData, _load_cached, load_dataset, parse_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Download:
    """One file to fetch: its name in the data directory, MD5, source URLs in order of preference, and whether it
    is a .tar.gz archive to unpack in place."""

    filename: str
    md5: str
    urls: tuple[str, ...]
    extract: bool = False


def _mnist() -> tuple[Download, ...]:
    from torchvision.datasets import MNIST

    return tuple(Download(name, md5, tuple(m + name for m in MNIST.mirrors)) for name, md5 in MNIST.resources)


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


def _fetch(item: Download, data_dir: Path, mirror: str | None) -> Path:
    """Fetch ``item`` into ``data_dir`` unless present with the right checksum; returns its path."""
    from torchvision.datasets.utils import download_url

    path = data_dir / item.filename
    if path.is_file() and md5_of(path) == item.md5:
        log.info("%s already present and verified", path)
        return path
    urls = (mirror.rstrip("/") + "/" + item.filename,) if mirror else item.urls
    failures = []
    for url in urls:
        try:
            download_url(url, str(data_dir), item.filename)
        except (OSError, RuntimeError, ValueError) as exc:
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
    data = parse_dataset(dataset)
    folder = Path(data_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    items = DOWNLOADS[data]()
    local = _local_copies(items, Path(source).expanduser()) if source is not None else {}
    for item in items:
        path = _copy_verified(item, local[item.filename], folder) if item.filename in local else \
            _fetch(item, folder, mirror)
        if item.extract:
            _extract(path, folder)
    _load_cached.cache_clear()  # a load from before the download may be cached (e.g. MNIST's test-only split)
    return load_dataset(data, folder)
