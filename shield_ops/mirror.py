"""The S3 mirror of a run: the PS's checkpoints and ``metrics.jsonl`` survive the PS instance.

Layout under ``s3://BUCKET/PREFIX/``: ``RUN`` (the name of the mirrored run directory, written last), and
``<run>/metrics.jsonl`` and ``<run>/checkpoints/step-XXXXXXXX.npz``. The supervisor on the PS node calls
:meth:`Mirror.sync` every interval (new checkpoint files first, then the metrics, then ``RUN``; every S3 PUT is
atomic, and a checkpoint is complete on disk before the PS renames it into place). A replacement PS node runs
``python -m shield_ops.mirror restore`` before its PS starts: the newest checkpoint and the metrics come back into
``~/shield/<run>`` and the PS is started with ``--resume`` (it verifies the checkpoint's digest and configuration).
The bucket must exist; the PS node's credentials (its instance profile) need s3:ListBucket, s3:GetObject,
s3:PutObject and s3:DeleteObject on the prefix.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

log = logging.getLogger("shield_ops.mirror")

CHECKPOINT_RE = re.compile(r"^step-\d{8}\.npz$")
RUN_RE = re.compile(r"^run(-\d{1,6})?$")
MAX_METRICS_BYTES = 1 << 30


@contextlib.asynccontextmanager
async def s3_client(region: str) -> AsyncIterator[Any]:
    """An aiobotocore S3 client; path-style addressing when an endpoint is set (moto, MinIO, LocalStack)."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = AioConfig(s3={"addressing_style": "path" if custom else "auto"}, retries={"max_attempts": 5})
    async with get_session().create_client("s3", region_name=region, config=config) as client:
        yield client


class Mirror:
    """One cluster's mirror (``bucket``, ``prefix``, ``region`` as written by ``up`` into supervisor.json)."""

    def __init__(self, bucket: str, prefix: str, region: str) -> None:
        self.bucket, self.prefix, self.region = bucket, prefix.strip("/"), region
        self._sent: dict[str, tuple[int, int]] = {}  # key -> (size, mtime_ns) already uploaded

    @classmethod
    def from_config(cls, mirror: dict[str, Any]) -> "Mirror":
        return cls(str(mirror["bucket"]), str(mirror.get("prefix", "")), str(mirror["region"]))

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    async def _put_if_changed(self, client: Any, path: Path, key: str) -> bool:
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        if self._sent.get(key) == stamp:
            return False
        await client.put_object(Bucket=self.bucket, Key=key, Body=path.read_bytes())
        self._sent[key] = stamp
        return True

    async def sync(self, run_dir: Path) -> int:
        """Upload what changed in ``run_dir``; delete mirrored checkpoints the PS has deleted. Returns the uploads."""
        if not RUN_RE.match(run_dir.name) or not run_dir.is_dir():
            return 0
        sent = 0
        async with s3_client(self.region) as client:
            local = sorted(p for p in (run_dir / "checkpoints").glob("step-*.npz") if CHECKPOINT_RE.match(p.name))
            for path in local:
                sent += await self._put_if_changed(client, path, self.key(run_dir.name, "checkpoints", path.name))
            metrics = run_dir / "metrics.jsonl"
            if metrics.exists():
                sent += await self._put_if_changed(client, metrics, self.key(run_dir.name, "metrics.jsonl"))
            if sent:
                await client.put_object(Bucket=self.bucket, Key=self.key("RUN"), Body=run_dir.name.encode())
            names = {p.name for p in local}
            for key in await self._list(client, self.key(run_dir.name, "checkpoints") + "/"):
                if key.rsplit("/", 1)[-1] not in names and local:
                    await client.delete_object(Bucket=self.bucket, Key=key)
                    self._sent.pop(key, None)
        return sent

    async def _list(self, client: Any, prefix: str) -> list[str]:
        keys: list[str] = []
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    async def _get(self, client: Any, key: str, dest: Path, limit: int) -> None:
        reply = await client.get_object(Bucket=self.bucket, Key=key)
        if int(reply.get("ContentLength", 0)) > limit:
            raise ValueError(f"s3://{self.bucket}/{key} is larger than {limit} bytes")
        async with reply["Body"] as body:
            data = await body.read()
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)

    async def restore(self, root: Path) -> str | None:
        """Bring the mirrored run's newest checkpoint and metrics into ``root/<run>``; returns the run's name, or
        None when the mirror holds no checkpoint (a fresh run then starts)."""
        async with s3_client(self.region) as client:
            try:
                reply = await client.get_object(Bucket=self.bucket, Key=self.key("RUN"))
                async with reply["Body"] as body:
                    name = (await body.read(64)).decode(errors="replace").strip()
            except client.exceptions.NoSuchKey:
                return None
            if not RUN_RE.match(name):
                raise ValueError(f"s3://{self.bucket}/{self.key('RUN')} names {name!r}, not a run directory")
            checkpoints = sorted(k for k in await self._list(client, self.key(name, "checkpoints") + "/")
                                 if CHECKPOINT_RE.match(k.rsplit("/", 1)[-1]))
            if not checkpoints:
                return None
            newest = checkpoints[-1]
            await self._get(client, newest, root / name / "checkpoints" / newest.rsplit("/", 1)[-1], 1 << 36)
            await self._get(client, self.key(name, "metrics.jsonl"), root / name / "metrics.jsonl", MAX_METRICS_BYTES)
        (root / "RUN").write_text(name + "\n")
        log.info("restored %s from s3://%s/%s", newest, self.bucket, self.key(name))
        return name


async def sync_dir(mirror: dict[str, Any], run_dir: Path, _cache: dict[str, Mirror] = {}) -> int:  # noqa: B006
    """:meth:`Mirror.sync` with one :class:`Mirror` (and its upload record) per configuration."""
    key = json.dumps(mirror, sort_keys=True)
    if key not in _cache:
        _cache[key] = Mirror.from_config(mirror)
    return await _cache[key].sync(run_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shield_ops.mirror", description="restore a run from S3")
    parser.add_argument("action", choices=["restore"])
    parser.add_argument("--config", type=Path, required=True, help="the supervisor.json written by shield-ops up")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    mirror = json.loads(args.config.read_text()).get("mirror") or {}
    if not mirror:
        parser.error(f"{args.config} configures no mirror")
    name = asyncio.run(Mirror.from_config(mirror).restore(args.config.resolve().parent))
    print(f"restored {name}" if name else "nothing to restore")
    return 0


if __name__ == "__main__":
    sys.exit(main())
