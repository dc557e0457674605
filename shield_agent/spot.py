"""Spot interruption notices from the EC2 instance metadata service (IMDSv2), for agents to leave the PS cleanly.

EC2 gives a spot instance a two-minute warning: ``GET /latest/meta-data/spot/instance-action`` turns from 404 into
``{"action": "terminate"|"stop"|"hibernate", "time": "2026-11-26T18:00:00Z"}``. IMDSv2 needs a session token from
``PUT /latest/api/token`` sent as ``X-aws-ec2-metadata-token``. This module polls that (every 5 s by default) with a
tiny HTTP/1.1 client over asyncio streams (no extra dependency); every byte from the service is treated as hostile
(sizes capped, JSON checked).

Use::

    watcher = SpotWatcher()
    notice = await watcher.run()      # None when no IMDS answers (not on EC2); else the notice
    # or: asyncio.create_task(watcher.run()); ...; if watcher.event.is_set(): leave
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

IMDS_HOST = "169.254.169.254"
IMDS_PORT = 80
TOKEN_TTL_S = 21600
MAX_HEADER_BYTES = 8192
MAX_BODY_BYTES = 65536
ACTIONS = frozenset({"terminate", "stop", "hibernate"})


#: the AWS SDKs' setting for another metadata endpoint (``http://host:port/``); tests point each node at its own
ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"


def endpoint_from_env() -> tuple[str, int]:
    """``$AWS_EC2_METADATA_SERVICE_ENDPOINT`` as (host, port) when set and well formed, else EC2's address."""
    text = os.environ.get(ENDPOINT_ENV, "")
    if text:
        try:
            url = urlsplit(text)
            if url.scheme == "http" and url.hostname:
                return url.hostname, url.port or 80
        except ValueError:
            pass
        log.warning("ignoring %s=%r: expected http://HOST[:PORT]/", ENDPOINT_ENV, text[:100])
    return IMDS_HOST, IMDS_PORT


class IMDSError(Exception):
    """The metadata service sent something that is not a well-formed HTTP/1.1 response we can use."""


@dataclass(frozen=True)
class SpotNotice:
    """An interruption notice: what EC2 will do, and when (ISO 8601 UTC, as IMDS wrote it)."""

    action: str
    time: str


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes


async def http_request(host: str, port: int, method: str, path: str, headers: dict[str, str],
                       timeout: float) -> Response:
    """One HTTP/1.1 request with ``Connection: close``; the body is read by Content-Length, capped."""
    async def exchange() -> Response:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", "Content-Length: 0"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
            await writer.drain()
            return await _read_response(reader)
        finally:
            writer.close()
    return await asyncio.wait_for(exchange(), timeout)


async def _read_response(reader: asyncio.StreamReader) -> Response:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise IMDSError("response header too long") from None
    except asyncio.IncompleteReadError:
        raise IMDSError("connection closed inside the response header") from None
    if len(head) > MAX_HEADER_BYTES:
        raise IMDSError("response header too long")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise IMDSError(f"bad status line {status_line[:80]!r}")
    length = 0
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                raise IMDSError("bad Content-Length")
            length = int(value.strip())
    if length > MAX_BODY_BYTES:
        raise IMDSError(f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise IMDSError("connection closed inside the body") from None
    return Response(int(parts[1]), body)


def parse_notice(body: bytes) -> SpotNotice:
    """Validate an ``instance-action`` document."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise IMDSError("instance-action is not JSON") from None
    if not isinstance(doc, dict) or doc.get("action") not in ACTIONS or not isinstance(doc.get("time"), str):
        raise IMDSError("instance-action lacks a known action and a time")
    return SpotNotice(doc["action"], doc["time"][:64])


def write_notice(path: Path, notice: SpotNotice) -> None:
    """Write ``notice`` as one JSON line to ``path`` atomically (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(notice)) + "\n")
    os.replace(tmp, path)


class SpotWatcher:
    """Poll IMDSv2 for a spot interruption notice; :attr:`event` is set and :attr:`notice` filled when one appears.

    With ``marker``, the notice is also written there (JSON) before :attr:`event` is set: shield-ops' probe reads it
    over SSH and starts the node's replacement at once (docs/ops.md). ``give_up_after`` consecutive failures *before the
    service ever answered* end the watch with ``None`` (we are not on EC2). Once it has answered, failures are logged
    and polling goes on.
    """

    def __init__(self, host: str = IMDS_HOST, port: int = IMDS_PORT, interval: float = 5.0,
                 timeout: float = 2.0, give_up_after: int = 3, marker: str | Path | None = None) -> None:
        if interval <= 0 or timeout <= 0 or give_up_after < 1:
            raise ValueError("interval and timeout must be > 0 and give_up_after >= 1")
        self.host, self.port = host, port
        self.interval, self.timeout, self.give_up_after = interval, timeout, give_up_after
        self.event = asyncio.Event()
        self.notice: SpotNotice | None = None
        self._token: str | None = None
        self._answered = False
        self.marker = Path(marker) if marker is not None else None

    async def _fetch_token(self) -> str:
        reply = await http_request(self.host, self.port, "PUT", "/latest/api/token",
                                   {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)}, self.timeout)
        token = reply.body.decode("ascii", "replace").strip()
        if reply.status != 200 or not token or len(token) > 1024 or not token.isprintable():
            raise IMDSError(f"token request answered {reply.status}")
        return token

    async def poll_once(self) -> SpotNotice | None:
        """One check: the notice if there is one, None if not (404). Raises on transport or protocol errors."""
        if self._token is None:
            self._token = await self._fetch_token()
        reply = await http_request(self.host, self.port, "GET", "/latest/meta-data/spot/instance-action",
                                   {"X-aws-ec2-metadata-token": self._token}, self.timeout)
        self._answered = True
        if reply.status == 401:
            self._token = None
            return None
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise IMDSError(f"instance-action answered {reply.status}")
        return parse_notice(reply.body)

    def _write_marker(self, notice: SpotNotice) -> None:
        if self.marker is None:
            return
        try:
            write_notice(self.marker, notice)
        except OSError as exc:
            log.error("cannot write the spot notice to %s (shield-ops will replace this node only once it is "
                      "gone): %s", self.marker, exc)

    async def run(self) -> SpotNotice | None:
        """Poll until a notice appears (returned, and :attr:`event` set) or IMDS proves absent (``None``)."""
        failures = 0
        while True:
            try:
                notice = await self.poll_once()
                failures = 0
            except (OSError, asyncio.TimeoutError, IMDSError) as exc:
                failures += 1
                if not self._answered and failures >= self.give_up_after:
                    log.info("no instance metadata service at %s:%d (%s); not watching for spot notices",
                             self.host, self.port, exc)
                    return None
                log.debug("IMDS poll failed: %s", exc)
                notice = None
            if notice is not None:
                self.notice = notice
                log.warning("spot interruption notice: %s at %s", notice.action, notice.time)
                self._write_marker(notice)
                self.event.set()
                return notice
            await asyncio.sleep(self.interval)
