"""``shield-agent prepare``: download and verify a dataset once, so a cluster can be prepared ahead of a job.

``--data-dir`` defaults to the cache that ``serve`` and ``join`` read when they are given no ``--data-dir``.
A directory ``serve`` trains from is accepted as it is: when the download fails but the directory already holds a
usable dataset (MNIST's test split alone, for instance), ``prepare`` says so and succeeds. ``--check`` downloads
nothing: it only loads what is in the directory and says what is missing and where.
``--from FILE`` takes the dataset from a local copy (e.g. ``cifar-10-binary.tar.gz``), checked by its MD5.
"""
from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    from shield_model.zoo.names import Dataset
    from shield_model.zoo.sources import CACHE_ENV, DEFAULT_CACHE

    parser = subparsers.add_parser("prepare", help="download and verify a dataset (checksums) into a directory")
    parser.add_argument("--dataset", required=True, metavar="NAME",
                        help=f"one of: {', '.join(d.value for d in Dataset)} (case-insensitive)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help=f"where the dataset files go (default: the cache, ${CACHE_ENV} or {DEFAULT_CACHE})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mirror", metavar="URL", help="fetch every file from URL/<file name> instead")
    source.add_argument("--from", dest="source", metavar="FILE", help="take the dataset from a local copy: one of "
                        "its files under any name (e.g. cifar-10-binary.tar.gz; checked by MD5) or a directory "
                        "holding its files")
    source.add_argument("--check", action="store_true", help="download nothing; verify what is there")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout (default 60 s)")


def run(args: argparse.Namespace) -> int:
    from shield_model.errors import DatasetError
    from shield_model.zoo.datasets import load_dataset
    from shield_model.zoo.names import parse_dataset
    from shield_model.zoo.prepare import prepare
    from shield_model.zoo.sources import cache_dir, check_data_dir, missing

    dataset = parse_dataset(args.dataset)
    folder = args.data_dir or str(cache_dir())
    if args.check:
        data = load_dataset(dataset, check_data_dir(dataset, folder))
    else:
        socket.setdefaulttimeout(args.timeout)
        try:
            data = prepare(dataset, folder, args.mirror, args.source)
        except DatasetError as exc:
            if missing(dataset, Path(folder).expanduser()) is not None:
                raise
            log.warning("%s; what %s holds is used as it is", exc, folder)
            data = load_dataset(dataset, folder)
    print(f"{dataset.value} ready in {folder}: {len(data.train_labels)} training and "
          f"{len(data.test_labels)} held-out images")
    return 0

