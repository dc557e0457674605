"""The agent's spot-interruption watcher against a fake IMDSv2 (a few lines of aiohttp on loopback)."""
from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from shield_agent.spot import (
    ENDPOINT_ENV,
    IMDSError,
    SpotNotice,
    SpotWatcher,
    endpoint_from_env,
    http_request,
    parse_notice,
)

aiohttp_web = pytest.importorskip("aiohttp.web")


class FakeIMDS:
    """IMDSv2: PUT /latest/api/token, then GET spot/instance-action with the token (404 until a notice is set)."""

    def __init__(self) -> None:
        self.notice: dict[str, Any] | None = None
        self.raw_body: bytes | None = None
        self.tokens_issued = 0
        self.polls = 0
        self.polled = asyncio.Event()
        self.rejected_without_token = 0

    async def token(self, request: Any) -> Any:
        assert request.headers["X-aws-ec2-metadata-token-ttl-seconds"] == "21600"
        self.tokens_issued += 1
        return aiohttp_web.Response(text=f"token-{self.tokens_issued}")

    async def action(self, request: Any) -> Any:
        if request.headers.get("X-aws-ec2-metadata-token") != f"token-{self.tokens_issued}":
            self.rejected_without_token += 1
            return aiohttp_web.Response(status=401)
        self.polls += 1
        self.polled.set()
        if self.raw_body is not None:
            return aiohttp_web.Response(body=self.raw_body)
        if self.notice is None:
            return aiohttp_web.Response(status=404)
        return aiohttp_web.Response(text=json.dumps(self.notice))


async def serve(imds: FakeIMDS) -> tuple[Any, int]:
    app = aiohttp_web.Application()
    app.router.add_put("/latest/api/token", imds.token)
    app.router.add_get("/latest/meta-data/spot/instance-action", imds.action)
    runner = aiohttp_web.AppRunner(app)
    await runner.setup()
    site = aiohttp_web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def with_imds(test: Callable[[FakeIMDS, int], Any]) -> Any:
    async def go() -> Any:
        imds = FakeIMDS()
        runner, port = await serve(imds)
        try:
            return await asyncio.wait_for(test(imds, port), 20)
        finally:
            await runner.cleanup()
    return asyncio.run(go())


def test_notice_sets_the_event_after_quiet_polls() -> None:
    async def test(imds: FakeIMDS, port: int) -> SpotNotice | None:
        watcher = SpotWatcher("127.0.0.1", port, interval=0.01)
        task = asyncio.create_task(watcher.run())
        while imds.polls < 3:  # a few 404s first
            imds.polled.clear()
            await imds.polled.wait()
        assert not watcher.event.is_set()
        imds.notice = {"action": "terminate", "time": "2026-11-26T18:00:00Z"}
        await watcher.event.wait()
        assert watcher.notice == SpotNotice("terminate", "2026-11-26T18:00:00Z")
        return await task
    assert with_imds(test) == SpotNotice("terminate", "2026-11-26T18:00:00Z")


def test_an_expired_token_is_renewed() -> None:
    async def test(imds: FakeIMDS, port: int) -> int:
        watcher = SpotWatcher("127.0.0.1", port, interval=0.01)
        assert await watcher.poll_once() is None
        imds.tokens_issued += 1  # the service forgets our token
        assert await watcher.poll_once() is None  # 401: dropped
        imds.notice = {"action": "stop", "time": "2026-11-26T18:02:00Z"}
        assert await watcher.poll_once() == SpotNotice("stop", "2026-11-26T18:02:00Z")
        return imds.rejected_without_token
    assert with_imds(test) == 1


def test_hostile_answers_are_errors_and_polling_goes_on() -> None:
    async def test(imds: FakeIMDS, port: int) -> SpotNotice | None:
        watcher = SpotWatcher("127.0.0.1", port, interval=0.01)
        imds.raw_body = b"x" * 100_000
        with pytest.raises(IMDSError, match="exceeds"):
            await watcher.poll_once()
        imds.raw_body = b'{"action": "explode", "time": "now"}'
        with pytest.raises(IMDSError, match="known action"):
            await watcher.poll_once()
        task = asyncio.create_task(watcher.run())
        imds.polled.clear()
        await imds.polled.wait()
        imds.raw_body = None
        imds.notice = {"action": "hibernate", "time": "2026-11-26T18:04:00Z"}
        return await task
    assert with_imds(test) == SpotNotice("hibernate", "2026-11-26T18:04:00Z")


def test_no_metadata_service_means_no_watch() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    watcher = SpotWatcher("127.0.0.1", port, interval=0.01, timeout=1.0, give_up_after=2)
    assert asyncio.run(watcher.run()) is None
    assert not watcher.event.is_set()


@pytest.mark.parametrize("body", [b"", b"\xff", b"[]", b'{"action": "terminate"}', b'{"time": "t"}'])
def test_parse_notice_rejects_malformed_documents(body: bytes) -> None:
    with pytest.raises(IMDSError):
        parse_notice(body)


def test_http_client_rejects_a_bad_status_line() -> None:
    async def go() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"SSH-2.0-nope\r\n\r\n")
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(IMDSError, match="bad status line"):
                await http_request("127.0.0.1", port, "GET", "/", {}, 5)
    asyncio.run(go())


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError):
        SpotWatcher(interval=0)


def test_the_notice_is_written_to_the_marker_before_the_event(tmp_path: Any) -> None:
    marker = tmp_path / "spot-notice"

    async def test(imds: FakeIMDS, port: int) -> bool:
        watcher = SpotWatcher("127.0.0.1", port, interval=0.01, marker=marker)
        imds.notice = {"action": "terminate", "time": "2026-11-26T18:00:00Z"}
        task = asyncio.create_task(watcher.run())
        await watcher.event.wait()
        written = marker.exists()
        await task
        return written
    assert with_imds(test)
    assert json.loads(marker.read_text()) == {"action": "terminate", "time": "2026-11-26T18:00:00Z"}
    assert not (tmp_path / "spot-notice.tmp").exists()


def test_an_unwritable_marker_is_logged_and_the_agent_still_leaves(tmp_path: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    async def test(imds: FakeIMDS, port: int) -> bool:
        watcher = SpotWatcher("127.0.0.1", port, interval=0.01, marker=tmp_path / "missing" / "spot-notice")
        imds.notice = {"action": "terminate", "time": "2026-11-26T18:00:00Z"}
        await watcher.run()
        return watcher.event.is_set()
    assert with_imds(test)
    assert "cannot write the spot notice" in caplog.text


@pytest.mark.parametrize("value, expected", [
    ("", ("169.254.169.254", 80)), ("http://127.0.0.1:8123/", ("127.0.0.1", 8123)),
    ("http://[::1]/", ("::1", 80)), ("ftp://x/", ("169.254.169.254", 80)),
    ("http://h:99999/", ("169.254.169.254", 80))])
def test_the_metadata_endpoint_comes_from_the_sdk_setting(monkeypatch: pytest.MonkeyPatch, value: str,
                                                          expected: tuple[str, int]) -> None:
    monkeypatch.setenv(ENDPOINT_ENV, value)
    assert endpoint_from_env() == expected


@pytest.mark.parametrize("header, expected", [
    ({"reason": "spot interruption"}, "spot interruption"), ({}, "left"), ({"reason": 7}, "left"),
    ({"reason": "x" * 65}, "left"), ({"reason": "a\nb"}, "left"), ({"reason": ""}, "left")])
def test_the_ps_records_a_leave_reason_only_when_it_is_short_printable_text(header: dict[str, Any],
                                                                            expected: str) -> None:
    from shield_ps.daemon import leave_reason

    assert leave_reason(header) == expected
