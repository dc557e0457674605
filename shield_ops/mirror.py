"""The S3 mirror of a run: the PS's checkpoints and ``metrics.jsonl`` survive the PS instance.

Every life of a cluster (``up`` after ``down`` starts a new one: its security group id names it) and every run in it
has its own place: ``s3://BUCKET/PREFIX/<life>/<run>/{metrics.jsonl,checkpoints/step-XXXXXXXX.npz}``, with
``<life>/RUN`` naming the life's current run (written last) and ``<life>/AUTOSTOP.json`` why the life stopped itself.
The supervisor on the PS node calls :meth:`Mirror.sync` every interval (new checkpoint files first, then the
metrics, then ``RUN``; every S3 PUT is atomic, and a checkpoint is complete on disk before the PS renames it into
place). A replacement PS node runs ``python -m shield_ops.mirror restore`` before its PS starts: it brings back *its
own life's* current run, when that run has a checkpoint and has not ended, and the PS resumes it with ``--resume``
(verifying the checkpoint's digest and configuration); otherwise it names a fresh run (``run``, ``run-2``, ... unused
in the life). A run of an older life is continued only when asked: ``up --resume-from s3://BUCKET/PREFIX/<life>/<run>``
(``restore --from URL``). The bucket must exist; the PS node's credentials (its instance profile) need s3:ListBucket,
s3:GetObject, s3:PutObject and s3:DeleteObject on the prefix (and s3:GetObject on a ``--resume-from`` source).
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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("shield_ops.mirror")

CHECKPOINT_RE = re.compile(r"^step-(\d{8})\.npz$")
RUN_RE = re.compile(r"^run(-\d{1,6})?$")
URL_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/([\w./-]+?)/?$")
MAX_METRICS_BYTES = 1 << 30
#: summary reasons after which a run is over: its checkpoint never starts another job (``interrupted`` is resumable)
ENDED = re.compile(r"^(completed|failed)")


@contextlib.asynccontextmanager
async def s3_client(region: str) -> AsyncIterator[Any]:
    """An aiobotocore S3 client; path-style addressing when an endpoint is set (moto, MinIO, LocalStack)."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = AioConfig(s3={"addressing_style": "path" if custom else "auto"}, retries={"max_attempts": 5})
    async with get_session().create_client("s3", region_name=region, config=config) as client:
        yield client


def run_index(name: str) -> int:
    """``run`` is 1, ``run-N`` is N."""
    return int(name.split("-")[1]) if "-" in name else 1


def ended(metrics: bytes) -> str | None:
    """The reason of the run's last summary when the run is over (no ``job`` after it), else None."""
    reason = None
    for line in metrics.splitlines()[-2000:]:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("kind") == "job":
            reason = None
        elif event.get("kind") == "summary":
            reason = str(event.get("reason", ""))[:500]
    return reason if reason is not None and ENDED.match(reason) else None


def parse_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/KEY`` -> (bucket, key without a trailing slash); a clear error otherwise."""
    match = URL_RE.match(url)
    if match is None:
        raise ValueError(f"{url!r} is not s3://BUCKET/PREFIX/LIFE/RUN (e.g. s3://my-runs/shield/demo/sg-0abc/run)")
    return match.group(1), match.group(2)


@dataclass(frozen=True)
class Restored:
    """What :meth:`Mirror.restore` left in the PS node's ``~/shield``: ``run`` to start, and whether it holds a
    checkpoint to resume (``step``, with the source's configuration hash when its metrics name one)."""

    run: str
    resumed: bool
    step: int | None = None
    config_hash: str | None = None
    source: str = ""

    def line(self) -> str:
        if not self.resumed:
            return f"fresh {self.run}"
        return f"restored {self.run} {self.step} {self.config_hash or '-'} {self.source}"


class Mirror:
    """One life's mirror (``bucket``, ``prefix``, ``region``, ``life`` as ``up`` writes them into supervisor.json)."""

    def __init__(self, bucket: str, prefix: str, region: str, life: str = "") -> None:
        self.bucket, self.prefix, self.region, self.life = bucket, prefix.strip("/"), region, life.strip("/")
        self._sent: dict[str, tuple[int, int]] = {}  # key -> (size, mtime_ns) already uploaded

    @classmethod
    def from_config(cls, mirror: dict[str, Any]) -> Mirror:
        return cls(str(mirror["bucket"]), str(mirror.get("prefix", "")), str(mirror["region"]),
                   str(mirror.get("life", "")))

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, self.life, *parts) if p)

    def url(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.key(*parts)}"

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

    async def _list(self, client: Any, prefix: str, delimiter: str = "") -> list[str]:
        keys: list[str] = []
        extra = {"Delimiter": delimiter} if delimiter else {}
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                             **extra):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
            keys.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return keys

    async def _read(self, client: Any, key: str, limit: int) -> bytes | None:
        try:
            reply = await client.get_object(Bucket=self.bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None
        if int(reply.get("ContentLength", 0)) > limit:
            raise ValueError(f"s3://{self.bucket}/{key} is larger than {limit} bytes")
        async with reply["Body"] as body:
            return bytes(await body.read())

    async def _get(self, client: Any, key: str, dest: Path, limit: int) -> None:
        data = await self._read(client, key, limit)
        if data is None:
            raise FileNotFoundError(f"s3://{self.bucket}/{key}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=dest.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)

    async def _next_run(self, client: Any) -> str:
        """The first run name this life's mirror has never used."""
        if not self.bucket:  # no mirror of our own (a --resume-from without [mirror])
            return "run"
        used = [k.rstrip("/").rsplit("/", 1)[-1] for k in await self._list(client, self.key() + "/", "/")]
        indices = [run_index(n) for n in used if RUN_RE.match(n)]
        return "run" if not indices else f"run-{max(indices) + 1}"

    async def _bring_back(self, client: Any, source: str, root: Path, name: str) -> Restored | None:
        """The newest checkpoint and the metrics under the key prefix ``source`` into ``root/name``; None when there
        is no checkpoint or the run has ended."""
        metrics = await self._read(client, f"{source}/metrics.jsonl", MAX_METRICS_BYTES) or b""
        over = ended(metrics)
        if over is not None:
            log.info("s3://%s/%s has ended (%s): its checkpoint starts no other job", self.bucket, source, over)
            return None
        checkpoints = sorted(k for k in await self._list(client, f"{source}/checkpoints/")
                             if CHECKPOINT_RE.match(k.rsplit("/", 1)[-1]))
        if not checkpoints:
            return None
        newest = checkpoints[-1].rsplit("/", 1)[-1]
        await self._get(client, checkpoints[-1], root / name / "checkpoints" / newest, 1 << 36)
        (root / name / "metrics.jsonl").write_bytes(metrics)
        step = int(CHECKPOINT_RE.match(newest).group(1))  # type: ignore[union-attr]
        return Restored(name, True, step, config_hash(metrics), f"s3://{self.bucket}/{source}")

    async def restore(self, root: Path) -> Restored:
        """On a PS node without a run: bring back this life's current run when it has a checkpoint and has not
        ended; else name a fresh run unused in this life. ``root/RUN`` names the result."""
        async with s3_client(self.region) as client:
            raw = await self._read(client, self.key("RUN"), 64)
            name = (raw or b"").decode(errors="replace").strip()
            if raw is not None and not RUN_RE.match(name):
                raise ValueError(f"{self.url('RUN')} names {name!r}, not a run directory")
            restored = await self._bring_back(client, self.key(name), root, name) if name else None
            result = restored or Restored(await self._next_run(client), False)
        (root / result.run).mkdir(parents=True, exist_ok=True)
        (root / "RUN").write_text(result.run + "\n")
        log.info("%s", f"restored {restored.source} at step {restored.step}" if restored else f"fresh {result.run}")
        return result

    async def restore_from(self, url: str, root: Path) -> Restored:
        """``up --resume-from URL``: bring back the run at ``URL`` (``.../<life>/<run>``, or ``.../<life>`` for that
        life's current run) into this life's next run name; an error when it has no checkpoint or has ended."""
        bucket, source = parse_url(url)
        other = Mirror(bucket, "", self.region)
        async with s3_client(self.region) as client:
            if not RUN_RE.match(source.rsplit("/", 1)[-1]):
                raw = (await other._read(client, f"{source}/RUN", 64) or b"").decode(errors="replace").strip()
                if not RUN_RE.match(raw):
                    raise ValueError(f"{url} names no run (no {url.rstrip('/')}/RUN); give .../<life>/<run>")
                source = f"{source}/{raw}"
            name = await self._next_run(client)
            restored = await other._bring_back(client, source, root, name)
        if restored is None:
            raise ValueError(f"s3://{bucket}/{source} holds no checkpoint of a run that can go on (none yet, or the "
                             "run has ended)")
        (root / "RUN").write_text(name + "\n")
        return restored

    async def put_record(self, text: str) -> str:
        """Write the life's autostop record (``AUTOSTOP.json``); returns its URL."""
        async with s3_client(self.region) as client:
            await client.put_object(Bucket=self.bucket, Key=self.key("AUTOSTOP.json"), Body=text.encode())
        return self.url("AUTOSTOP.json")

    async def get_record(self) -> str | None:
        async with s3_client(self.region) as client:
            data = await self._read(client, self.key("AUTOSTOP.json"), 1 << 16)
        return None if data is None else data.decode(errors="replace")


def config_hash(metrics: bytes) -> str | None:
    """The configuration hash of the last ``job`` event in a run's metrics (the PS checks it again on resume)."""
    found = None
    for line in metrics.splitlines()[-2000:]:
        if b'"job"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("kind") == "job" and isinstance(event.get("config_hash"), str):
            found = event["config_hash"][:64]
    return found


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
    parser.add_argument("--from", dest="source", default=None, metavar="S3_URL",
                        help="continue this run of another life (s3://BUCKET/PREFIX/LIFE/RUN) instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    raw = json.loads(args.config.read_text())
    mirror = raw.get("mirror") or {"bucket": "", "prefix": "", "region": raw["region"]}
    if not raw.get("mirror") and args.source is None:
        parser.error(f"{args.config} configures no mirror")
    root = args.config.resolve().parent
    this = Mirror.from_config(mirror)
    try:
        result = asyncio.run(this.restore_from(args.source, root) if args.source else this.restore(root))
    except ValueError as exc:
        print(f"refused {exc}")
        return 2
    print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
