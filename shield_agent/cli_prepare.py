"""``shield-agent prepare``: download and verify a dataset once, so a cluster can be prepared ahead of a job.

``--check`` downloads nothing: it only loads what is in ``--data-dir`` and says what is missing and where.
``--from FILE`` takes the dataset from a local copy (e.g. ``cifar-10-binary.tar.gz``), checked by its MD5.
"""
from __future__ import annotations

import argparse
import socket


def register(subparsers: argparse._SubParsersAction) -> None:
    from shield_agent.zoo.names import Dataset

    parser = subparsers.add_parser("prepare", help="download and verify a dataset (checksums) into a directory")
    parser.add_argument("--dataset", required=True, metavar="NAME",
                        help=f"one of: {', '.join(d.value for d in Dataset)} (case-insensitive)")
    parser.add_argument("--data-dir", required=True, metavar="DIR", help="where the dataset files go")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--mirror", metavar="URL", help="fetch every file from URL/<file name> instead")
    source.add_argument("--from", dest="source", metavar="FILE", help="take the dataset from a local copy: one of "
                        "its files under any name (e.g. cifar-10-binary.tar.gz; checked by MD5) or a directory "
                        "holding its files")
    source.add_argument("--check", action="store_true", help="download nothing; verify what is there")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout (default 60 s)")


def run(args: argparse.Namespace) -> int:
    from shield_agent.zoo.datasets import load_dataset
    from shield_agent.zoo.names import parse_dataset
    from shield_agent.zoo.prepare import prepare

    dataset = parse_dataset(args.dataset)
    if args.check:
        data = load_dataset(dataset, args.data_dir)
    else:
        socket.setdefaulttimeout(args.timeout)
        data = prepare(dataset, args.data_dir, args.mirror, args.source)
    print(f"{dataset.value} ready in {args.data_dir}: {len(data.train_labels)} training and "
          f"{len(data.test_labels)} held-out images")
    return 0
