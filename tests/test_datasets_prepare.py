"""``shield-agent prepare``: checksummed downloads from a local HTTP mirror (never the internet), refusal of corrupt
downloads and unsafe archives, and the offline ``--check`` path through the real CLI entry point."""
from __future__ import annotations

import functools
import http.server
import io
import shutil
import socket
import tarfile
import threading
from pathlib import Path

import pytest

from shield_agent.cli import main
from shield_model.errors import DatasetError
from shield_model.zoo.names import Dataset
from shield_model.zoo.prepare import DOWNLOADS, _extract, _fetch, md5_of, prepare
from tests.runtime_helpers import MNIST_DIR


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
    assert f"--data-dir {tmp_path} does not hold Cifar100: cifar-100-binary/train.bin" in err
    assert f"shield-agent prepare --dataset Cifar100 --data-dir {tmp_path}" in err


def test_cli_accepts_a_directory_serve_trains_from_when_nothing_can_be_downloaded(tmp_path, capsys):
    """MNIST's test split alone is what serve trains from offline: prepare fails to fetch the rest (the mirror is a
    dead port here) and says the directory is usable as it is, instead of refusing it."""
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(MNIST_DIR / name, tmp_path / name)
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
    code = main(["prepare", "--dataset", "MNIST", "--data-dir", str(tmp_path), "--mirror", f"http://127.0.0.1:{port}",
                 "--timeout", "5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"MNIST ready in {tmp_path}: 8000 training and 2000 held-out images" in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_cli_failed_download_into_a_new_directory_leaves_nothing(tmp_path, capsys):
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
    target = tmp_path / "typo" / "mnist"
    code = main(["prepare", "--dataset", "MNIST", "--data-dir", str(target), "--mirror", f"http://127.0.0.1:{port}",
                 "--timeout", "5"])
    assert code == 2
    assert "could not be downloaded" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def _fake_cifar10(path: Path, records: int = 2) -> Path:
    """A CIFAR-10 binary archive in the real layout, with ``records`` images per batch file (labels 0..9)."""
    import numpy as np

    members = {}
    for index, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        rows = np.random.default_rng(index).integers(0, 256, (records, 3073), dtype=np.uint8)
        rows[:, 0] = np.arange(records) % 10
        members[f"cifar-10-batches-bin/{name}"] = rows.tobytes()
    return _tar(path, members)


def test_from_a_local_copy_checked_by_md5(tmp_path, capsys, monkeypatch):
    from shield_model.zoo.prepare import Download

    archive = _fake_cifar10(tmp_path / "my-copy.tgz")
    monkeypatch.setitem(DOWNLOADS, Dataset.CIFAR10, lambda: (
        Download("cifar-10-binary.tar.gz", md5_of(archive), ("http://127.0.0.1:9/unreachable",), extract=True),))
    target = tmp_path / "data"
    assert main(["prepare", "--dataset", "cifar10", "--data-dir", str(target), "--from", str(archive)]) == 0
    out = capsys.readouterr().out
    assert f"Cifar10 ready in {target}: 10 training and 2 held-out images" in out
    assert md5_of(target / "cifar-10-binary.tar.gz") == md5_of(archive)
    assert (target / "cifar-10-batches-bin" / "test_batch.bin").stat().st_size == 2 * 3073
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]
    # a directory holding the file under its usual name works the same way
    again = tmp_path / "again"
    assert main(["prepare", "--dataset", "Cifar10", "--data-dir", str(again), "--from", str(target)]) == 0


def test_from_a_wrong_file_copies_nothing_and_says_what_was_expected(tmp_path, capsys):
    wrong = tmp_path / "cifar-10-binary.tar.gz"
    wrong.write_bytes(b"a truncated download")
    target = tmp_path / "data"
    assert main(["prepare", "--dataset", "Cifar10", "--data-dir", str(target), "--from", str(wrong)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "is not a file of this dataset; expected cifar-10-binary.tar.gz (MD5 " \
        "c32a1d4ab5d03f1284b67883e8d87530). Nothing was copied" in err
    assert not target.exists() or not any(target.iterdir())
    assert main(["prepare", "--dataset", "Cifar10", "--data-dir", str(target), "--from", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["prepare", "--dataset", "Cifar10", "--data-dir", str(target), "--from", str(wrong), "--check"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
