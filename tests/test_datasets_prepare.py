"""``shield-agent prepare``: checksummed downloads from a local HTTP mirror (never the internet), refusal of corrupt
downloads and unsafe archives, and the offline ``--check`` path through the real CLI entry point."""
from __future__ import annotations

import functools
import http.server
import io
import os
import shutil
import tarfile
import threading
from pathlib import Path

import pytest

from shield_agent.cli import main
from shield_agent.errors import DatasetError
from shield_agent.zoo.names import Dataset
from shield_agent.zoo.prepare import DOWNLOADS, _extract, _fetch, md5_of, prepare

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("SHIELD_MNIST_DIR", str(REPO.parent / "shared" / "data" / "mnist")))


class Mirror:
    """A static HTTP server on 127.0.0.1 (port 0) serving ``root``, counting the requests it answers."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests = root, []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/files"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "served"
    (root / "files").mkdir(parents=True)
    server = Mirror(root)
    yield server
    server.close()


def test_downloads_verify_and_are_not_fetched_twice(mirror, tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_DIR / name, mirror.root / "files" / name)
    target = tmp_path / "data"
    target.mkdir()
    items = [item for item in DOWNLOADS[Dataset.MNIST]() if item.filename.startswith("t10k")]
    assert len(items) == 2
    for item in items:
        path = _fetch(item, target, mirror.url)
        assert md5_of(path) == item.md5 == md5_of(MNIST_DIR / item.filename)
    served = len(mirror.requests)
    assert served >= 2
    for item in items:
        _fetch(item, target, mirror.url)
    assert len(mirror.requests) == served


def test_a_corrupt_download_is_deleted_and_refused(mirror, tmp_path):
    (mirror.root / "files" / "cifar-10-binary.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DatasetError, match="checksum mismatch.*expected c32a1d4ab5d03f1284b67883e8d87530"):
        prepare("Cifar10", tmp_path / "data", mirror=mirror.url)
    assert not (tmp_path / "data" / "cifar-10-binary.tar.gz").exists()


def test_an_unreachable_file_is_named_with_where_it_should_go(mirror, tmp_path):
    target = tmp_path / "data"
    with pytest.raises(DatasetError, match=rf"train-images-idx3-ubyte\.gz is missing and could not be downloaded "
                                           rf".*404.*copy it to {target / 'train-images-idx3-ubyte.gz'}"):
        prepare("MNIST", target, mirror=mirror.url)


def _tar(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("evil-link")
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
    return path


def test_archives_unpack_in_place_and_unsafe_members_are_refused(tmp_path):
    _extract(_tar(tmp_path / "good.tar.gz", {"cifar-10-batches-bin/test_batch.bin": b"abc"}), tmp_path)
    assert (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").read_bytes() == b"abc"
    with pytest.raises(DatasetError, match="refusing archive member '../escape'"):
        _extract(_tar(tmp_path / "up.tar.gz", {"../escape": b"x"}), tmp_path / "cifar-10-batches-bin")
    assert not (tmp_path / "escape").exists()
    with pytest.raises(DatasetError, match="evil-link"):
        _extract(_tar(tmp_path / "link.tar.gz", {}, link="/etc/passwd"), tmp_path)


def test_cli_check_reports_or_names_the_missing_file(tmp_path, capsys):
    assert main(["prepare", "--dataset", "mnist", "--data-dir", str(MNIST_DIR), "--check"]) == 0
    assert "MNIST ready" in capsys.readouterr().out
    assert main(["prepare", "--dataset", "Cifar100", "--data-dir", str(tmp_path), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"train.bin is missing; it should be at {tmp_path / 'cifar-100-binary' / 'train.bin'}" in err
