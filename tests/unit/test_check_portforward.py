"""The port-forward client of ``x0tta6bl4 check`` against a local WebSocket server speaking the
API server's ``v4.channel.k8s.io`` framing: a normal answer, a body cut by the connection's
close, an oversize answer, the error channel, a refused upgrade, garbage instead of HTTP.
(The real API server, kubelet and containerd are exercised by tests/cluster/.)"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from x0tta6bl4.check.portforward import PROTOCOL, PortForwardError, http_get

Script = Callable[[bytes], list[bytes]]


def frames(port: int, *data: bytes, error: bytes = b"") -> list[bytes]:
    """What the kubelet sends: the port on channels 0 and 1, then data (and errors)."""
    out = [b"\x00" + struct.pack("<H", port), b"\x01" + struct.pack("<H", port)]
    out += [b"\x00" + d for d in data]
    if error:
        out.append(b"\x01" + error)
    return out


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, Script]]]:
    scripts: dict[str, Script] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        if "script" not in scripts:
            return web.Response(status=404, text="no such subresource")
        ws = web.WebSocketResponse(protocols=(PROTOCOL,))
        await ws.prepare(request)
        assert request.query["ports"] == "7811"
        msg = await ws.receive()
        assert msg.data[0] == 0
        for frame in scripts["script"](msg.data[1:]):
            await ws.send_bytes(frame)
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ns/pods/p/portforward", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/api/v1/namespaces/ns/pods/p/portforward", scripts
    finally:
        await runner.cleanup()


async def get(url: str, max_body: int = 1 << 20) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session:
        return await http_get(
            session, url, {}, 7811, "/v1/status?x=1", timeout=5, max_body=max_body
        )


async def test_answer_with_content_length(server: tuple[str, dict[str, Script]]) -> None:
    url, scripts = server
    seen: list[bytes] = []

    def script(request: bytes) -> list[bytes]:
        seen.append(request)
        return frames(7811, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe", b"llo")

    scripts["script"] = script
    assert await get(url) == (200, b"hello")
    assert seen[0].startswith(b"GET /v1/status?x=1 HTTP/1.1\r\n")
    assert b"connection: close" in seen[0].lower()


async def test_body_delimited_by_close(server: tuple[str, dict[str, Script]]) -> None:
    url, scripts = server
    scripts["script"] = lambda _r: frames(7811, b"HTTP/1.1 503 x\r\nConnection: close\r\n\r\nbusy")
    assert await get(url) == (503, b"busy")


async def test_oversize_answer_is_refused(server: tuple[str, dict[str, Script]]) -> None:
    url, scripts = server
    scripts["script"] = lambda _r: frames(
        7811, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    )
    with pytest.raises(PortForwardError, match="larger than 1000 bytes"):
        await get(url, max_body=1000)


async def test_error_channel_is_reported(server: tuple[str, dict[str, Script]]) -> None:
    url, scripts = server
    scripts["script"] = lambda _r: frames(7811, error=b"connection refused on port 7811")
    with pytest.raises(PortForwardError, match="connection refused on port 7811"):
        await get(url)


async def test_garbage_is_not_an_answer(server: tuple[str, dict[str, Script]]) -> None:
    url, scripts = server
    scripts["script"] = lambda _r: frames(7811, b"\x16\x03\x01 not http at all\r\n\r\n")
    with pytest.raises(PortForwardError, match="not an HTTP answer"):
        await get(url)


async def test_refused_upgrade_carries_the_status(server: tuple[str, dict[str, Script]]) -> None:
    url, _ = server
    with pytest.raises(PortForwardError) as info:
        await get(url)
    assert info.value.status == 404
